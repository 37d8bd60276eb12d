//! The simulator's control port: one text command per line, one reply.
//!
//! Scripts and tests drive the simulated calls with nothing but a TCP socket
//! (`nc 127.0.0.1 PORT`). Every reply is `OK [value]` or `ERR message` on one
//! line, except `list`, which sends one line per leg and link, then `END`.
//! The full list is in `docs/protocol.md`.

use super::state::EngineState;
use legsync::model::{Direction, Protocol};

/// A parsed control command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlCommand {
    /// A new leg: ringing (`ring`), or answered at once, host or no host
    /// (`call`).
    Ring {
        nap: String,
        calling: String,
        called: String,
        direction: Direction,
        protocol: Protocol,
        answered: bool,
    },
    Answer(u64),
    Terminate(u64),
    Release(u64),
    Link(u64, u64),
    Unlink(u64),
    /// A new, empty conference mixer with this name (protocol 4).
    Mixer(String),
    /// Join a leg to a mixer.
    Join {
        leg: u64,
        mixer: u64,
        role: legsync::model::JoinRole,
    },
    /// Take a leg out of a mixer.
    Unjoin {
        leg: u64,
        mixer: u64,
    },
    /// Free a mixer (its legs are unjoined and live on).
    FreeMixer(u64),
    List,
    Counts,
    /// Save the media-unit view to the state file now.
    Sync,
    Boot,
    /// Release this many answered legs and answer this many new ones.
    Churn(u64, u64),
    /// This many new calls, each offered and answered at once, with events.
    Calls(u64),
    /// Cut the host off for this many milliseconds (its connection closes
    /// and new ones are refused), as a network drop would.
    Partition(u64),
    /// Cut off only the current controller for this many milliseconds: its
    /// connection goes silent and its new connections are refused, while
    /// other hosts can connect (a partition of the active host of a pair).
    Isolate(u64),
    /// Which host controls the engine, and the last epoch given out.
    Controller,
    /// Generated traffic: this many call events per second (answers and
    /// releases alternating) for this many milliseconds (see `traffic`).
    Traffic {
        rate: u64,
        ms: u64,
    },
    /// Release this many answered calls at once, logged (see `traffic`).
    Burst(u64),
    /// The longest gap between the controller's heartbeats since last
    /// asked, and how many arrived.
    Heartbeats,
}

pub const HELP: &str = "commands: ring NAP CALLING CALLED [in|out] [sip|isdn|ss7|cas|media] | call (as ring, answered at once) | answer LEG | terminate LEG | release LEG | link LEG LEG | unlink LINK | mixer NAME | join LEG MIXER [speaker|listener|both] | unjoin LEG MIXER | free-mixer MIXER | list | counts | sync | boot | partition MS | isolate MS | controller | churn RELEASE ADD | calls N | traffic RATE MS | burst N | heartbeats";

impl ControlCommand {
    pub fn parse(line: &str) -> Result<ControlCommand, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let id = |i: usize| -> Result<u64, String> {
            let word = words
                .get(i)
                .ok_or_else(|| format!("missing argument {i}; {HELP}"))?;
            word.parse().map_err(|_| format!("`{word}` is not an id"))
        };
        let exact = |n: usize| -> Result<(), String> {
            if words.len() == n {
                Ok(())
            } else {
                Err(format!("`{}` takes {} argument(s)", words[0], n - 1))
            }
        };
        let Some(&verb) = words.first() else {
            return Err(format!("empty command; {HELP}"));
        };
        let command = match verb {
            "ring" | "call" => {
                if !(4..=6).contains(&words.len()) {
                    return Err(format!(
                        "usage: {verb} NAP CALLING CALLED [in|out] [sip|isdn|ss7|cas|media]"
                    ));
                }
                let direction = match words.get(4) {
                    None | Some(&"in") => Direction::Inbound,
                    Some(&"out") => Direction::Outbound,
                    Some(other) => return Err(format!("direction `{other}` is not in|out")),
                };
                let protocol = match words.get(5) {
                    None | Some(&"sip") => Protocol::Sip,
                    Some(&"isdn") => Protocol::Isdn,
                    Some(&"ss7") => Protocol::Ss7,
                    Some(&"cas") => Protocol::Cas,
                    Some(&"media" | &"media-only") => Protocol::MediaOnly,
                    Some(other) => {
                        return Err(format!("protocol `{other}` is not sip|isdn|ss7|cas|media"));
                    }
                };
                ControlCommand::Ring {
                    nap: words[1].into(),
                    calling: words[2].into(),
                    called: words[3].into(),
                    direction,
                    protocol,
                    answered: verb == "call",
                }
            }
            "answer" => exact(2).and(id(1)).map(ControlCommand::Answer)?,
            "terminate" => exact(2).and(id(1)).map(ControlCommand::Terminate)?,
            "release" => exact(2).and(id(1)).map(ControlCommand::Release)?,
            "link" => {
                exact(3)?;
                ControlCommand::Link(id(1)?, id(2)?)
            }
            "unlink" => exact(2).and(id(1)).map(ControlCommand::Unlink)?,
            "mixer" => {
                exact(2)?;
                ControlCommand::Mixer(words[1].into())
            }
            "join" => {
                if !(3..=4).contains(&words.len()) {
                    return Err("usage: join LEG MIXER [speaker|listener|both]".into());
                }
                ControlCommand::Join {
                    leg: id(1)?,
                    mixer: id(2)?,
                    role: words.get(3).map_or(Ok(Default::default()), |w| w.parse())?,
                }
            }
            "unjoin" => {
                exact(3)?;
                ControlCommand::Unjoin {
                    leg: id(1)?,
                    mixer: id(2)?,
                }
            }
            "free-mixer" => exact(2).and(id(1)).map(ControlCommand::FreeMixer)?,
            "list" => exact(1).map(|_| ControlCommand::List)?,
            "counts" => exact(1).map(|_| ControlCommand::Counts)?,
            "sync" => exact(1).map(|_| ControlCommand::Sync)?,
            "boot" => exact(1).map(|_| ControlCommand::Boot)?,
            "partition" => exact(2).and(id(1)).map(ControlCommand::Partition)?,
            "isolate" => exact(2).and(id(1)).map(ControlCommand::Isolate)?,
            "controller" => exact(1).map(|_| ControlCommand::Controller)?,
            "churn" => {
                exact(3)?;
                ControlCommand::Churn(id(1)?, id(2)?)
            }
            "calls" => exact(2).and(id(1)).map(ControlCommand::Calls)?,
            "traffic" => {
                exact(3)?;
                ControlCommand::Traffic {
                    rate: id(1)?,
                    ms: id(2)?,
                }
            }
            "burst" => exact(2).and(id(1)).map(ControlCommand::Burst)?,
            "heartbeats" => exact(1).map(|_| ControlCommand::Heartbeats)?,
            other => return Err(format!("unknown command `{other}`; {HELP}")),
        };
        Ok(command)
    }

    /// Whether the command changes the media-unit view (and must be saved
    /// before it is acknowledged).
    pub fn mutates(&self) -> bool {
        !matches!(
            self,
            ControlCommand::List
                | ControlCommand::Counts
                | ControlCommand::Boot
                | ControlCommand::Controller
                | ControlCommand::Heartbeats
        )
    }
}

/// Runs a command; returns the reply text (without the final newline).
pub fn execute(
    state: &mut EngineState,
    command: &ControlCommand,
    boot_id: u64,
    now_ms: u64,
) -> String {
    let done = |r: Result<(), super::state::SimError>| match r {
        Ok(()) => "OK".to_string(),
        Err(e) => format!("ERR {e}"),
    };
    match command {
        ControlCommand::Ring {
            nap,
            calling,
            called,
            direction,
            protocol,
            answered,
        } => {
            let (direction, protocol) = (*direction, *protocol);
            let leg = if *answered {
                Ok(state.call(nap, calling, called, direction, protocol, now_ms))
            } else {
                state.ring(nap, calling, called, direction, protocol, now_ms)
            };
            match leg {
                Ok(id) => format!("OK {id}"),
                Err(e) => format!("ERR {e}"),
            }
        }
        ControlCommand::Answer(id) => done(state.answer(*id, now_ms)),
        ControlCommand::Terminate(id) => done(state.terminate(*id)),
        ControlCommand::Release(id) => done(state.release(*id)),
        ControlCommand::Link(a, b) => match state.link(*a, *b) {
            Ok(id) => format!("OK {id}"),
            Err(e) => format!("ERR {e}"),
        },
        ControlCommand::Unlink(id) => done(state.unlink(*id)),
        ControlCommand::Mixer(name) => format!("OK {}", state.create_mixer(name, now_ms)),
        ControlCommand::Join { leg, mixer, role } => done(state.join(*leg, *mixer, *role)),
        ControlCommand::Unjoin { leg, mixer } => done(state.unjoin(*leg, *mixer)),
        ControlCommand::FreeMixer(mixer) => done(state.free_mixer(*mixer)),
        ControlCommand::List => {
            let mut legs: Vec<_> = state.legs().collect();
            legs.sort_by_key(|l| l.id);
            let mut out = String::new();
            for l in legs {
                let linked = l.linked_to.map_or("-".to_string(), |x| x.to_string());
                out.push_str(&format!(
                    "leg {} {:?} {} {} {} linked={linked}\n",
                    l.id, l.state, l.nap, l.calling, l.called
                ));
            }
            let mut links: Vec<_> = state.links().collect();
            links.sort_by_key(|l| l.id);
            for l in links {
                out.push_str(&format!("link {} {} {}\n", l.id, l.leg_a, l.leg_b));
            }
            let (mixers, joins) = state.conferences();
            for m in mixers {
                out.push_str(&format!("mixer {} {}\n", m.id, m.name));
            }
            for j in joins {
                out.push_str(&format!("join {} {} {}\n", j.mixer, j.leg, j.role.as_str()));
            }
            out.push_str("END");
            out
        }
        ControlCommand::Counts => {
            let c = state.counts();
            let host = if state.host_attached() {
                "connected"
            } else {
                "none"
            };
            format!(
                "OK legs={} answered={} transient={} terminating={} links={} mixers={} joins={} host={host}",
                c.legs, c.answered, c.transient, c.terminating, c.links, c.mixers, c.joins
            )
        }
        ControlCommand::Sync => "OK".into(),
        ControlCommand::Boot => format!("OK {boot_id}"),
        ControlCommand::Calls(count) => {
            state.calls(*count, now_ms);
            "OK".into()
        }
        ControlCommand::Churn(release, add) => {
            state.churn(*release as usize, *add, now_ms);
            "OK".into()
        }
        // Handled by the server, which owns the connections.
        // Served by the server, which owns the network and the slot.
        ControlCommand::Partition(_)
        | ControlCommand::Isolate(_)
        | ControlCommand::Controller
        | ControlCommand::Traffic { .. }
        | ControlCommand::Burst(_)
        | ControlCommand::Heartbeats => "ERR not a state command".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_with_defaults_and_clear_errors() {
        assert_eq!(
            ControlCommand::parse("ring SIP_A 100 200").unwrap(),
            ControlCommand::Ring {
                nap: "SIP_A".into(),
                calling: "100".into(),
                called: "200".into(),
                direction: Direction::Inbound,
                protocol: Protocol::Sip,
                answered: false
            }
        );
        assert_eq!(
            ControlCommand::parse("link 1 2").unwrap(),
            ControlCommand::Link(1, 2)
        );
        assert!(
            ControlCommand::parse("answer x")
                .unwrap_err()
                .contains("`x` is not an id")
        );
        assert!(
            ControlCommand::parse("answer")
                .unwrap_err()
                .contains("takes 1 argument")
        );
        assert!(
            ControlCommand::parse("fly")
                .unwrap_err()
                .contains("unknown command")
        );
        assert!(
            ControlCommand::parse("ring N 1 2 sideways")
                .unwrap_err()
                .contains("in|out")
        );
    }

    #[test]
    fn execute_drives_the_state() {
        let mut state = EngineState::default();
        assert_eq!(
            execute(
                &mut state,
                &ControlCommand::parse("ring N 1 2").unwrap(),
                1,
                5
            ),
            "ERR no host is connected: the engine refuses new calls (`call` makes an answered one)"
        );
        assert_eq!(
            execute(
                &mut state,
                &ControlCommand::parse("call N 1 2").unwrap(),
                1,
                5
            ),
            "OK 1",
            "an answered call needs no host"
        );
        let (host, _events) = tokio::sync::mpsc::unbounded_channel();
        state.attach_host(host);
        let ring = ControlCommand::parse("ring SIP_A 100 200 out isdn").unwrap();
        assert_eq!(execute(&mut state, &ring, 1, 5), "OK 2");
        assert_eq!(execute(&mut state, &ControlCommand::Answer(2), 1, 6), "OK");
        assert_eq!(
            execute(&mut state, &ControlCommand::Answer(2), 1, 6),
            "ERR leg 2 is Answered, not ringing"
        );
        assert!(
            execute(&mut state, &ControlCommand::Counts, 1, 6).starts_with("OK legs=2 answered=2")
        );
        assert_eq!(
            execute(&mut state, &ControlCommand::List, 1, 6),
            "leg 1 Answered N 1 2 linked=-\nleg 2 Answered SIP_A 100 200 linked=-\nEND"
        );
    }
}
