//! A JetStream cluster of real `nats-server` processes on loopback, in a
//! temporary directory: for the fleet-stream tests and `legsync bench
//! --ship`. Nodes can be killed and restarted (same ports, same storage).

use anyhow::Context;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// Where Debian's package puts the server.
pub const NATS_SERVER_PATHS: [&str; 3] = [
    "/usr/sbin/nats-server",
    "/usr/bin/nats-server",
    "/usr/local/bin/nats-server",
];

/// The installed `nats-server`, if any.
pub fn nats_server() -> Option<PathBuf> {
    NATS_SERVER_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// How long a cluster may take to elect its JetStream leader.
pub const READY_WITHIN: Duration = Duration::from_secs(30);

/// One node of the cluster.
#[derive(Debug)]
struct Node {
    config: PathBuf,
    client_port: u16,
    child: Option<Child>,
}

/// A running cluster (stopped when dropped).
#[derive(Debug)]
pub struct NatsCluster {
    exe: PathBuf,
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
    /// With TLS: the client side of the trial PKI (for its own probes).
    client_tls: Option<legsync::tls::TlsFiles>,
}

/// Ports free on loopback now (taken together so they differ).
fn free_ports(count: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()?)
}

impl NatsCluster {
    /// Starts `size` nodes (1 runs JetStream alone, without a cluster) and
    /// waits until JetStream answers.
    pub async fn start(exe: &Path, size: usize) -> anyhow::Result<NatsCluster> {
        Self::start_with(exe, size, None).await
    }

    /// [`NatsCluster::start`] with clients over mutual TLS: the servers
    /// show `pki.engine`'s certificate (for 127.0.0.1) and require one
    /// chaining to its CA; `pki.host`'s is a client's.
    pub async fn start_tls(
        exe: &Path,
        size: usize,
        pki: &legsync::tls::Pki,
    ) -> anyhow::Result<NatsCluster> {
        Self::start_with(exe, size, Some(pki)).await
    }

    async fn start_with(
        exe: &Path,
        size: usize,
        pki: Option<&legsync::tls::Pki>,
    ) -> anyhow::Result<NatsCluster> {
        let dir = tempfile::tempdir()?;
        let ports = free_ports(size * 2)?;
        let (clients, routes) = ports.split_at(size);
        let mut nodes = Vec::new();
        for i in 0..size {
            let store = dir.path().join(format!("n{i}"));
            let mut text = format!(
                "server_name: n{i}\nhost: 127.0.0.1\nport: {}\njetstream {{\n  store_dir: \"{}\"\n}}\n",
                clients[i],
                store.display()
            );
            if let Some(pki) = pki {
                text.push_str(&format!(
                    "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n}}\n",
                    pki.engine.cert.display(),
                    pki.engine.key.display(),
                    pki.engine.ca.display()
                ));
            }
            if size > 1 {
                let others: Vec<String> = routes
                    .iter()
                    .enumerate()
                    .filter(|&(j, _)| j != i)
                    .map(|(_, port)| format!("\"nats-route://127.0.0.1:{port}\""))
                    .collect();
                text.push_str(&format!(
                    "cluster {{\n  name: legsync-trial\n  listen: \"127.0.0.1:{}\"\n  routes: [{}]\n}}\n",
                    routes[i],
                    others.join(", ")
                ));
            }
            let config = dir.path().join(format!("n{i}.conf"));
            std::fs::write(&config, text)?;
            nodes.push(Node {
                config,
                client_port: clients[i],
                child: None,
            });
        }
        let mut cluster = NatsCluster {
            exe: exe.to_path_buf(),
            dir,
            nodes,
            client_tls: pki.map(|pki| pki.host.clone()),
        };
        for i in 0..size {
            cluster.start_node(i)?;
        }
        cluster.wait_ready().await?;
        Ok(cluster)
    }

    /// The client URLs, one per node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.client_port))
            .collect()
    }

    /// `servers = [...]` for a host config's `[ship]`.
    pub fn servers_toml(&self) -> String {
        let urls: Vec<String> = self.urls().iter().map(|u| format!("\"{u}\"")).collect();
        format!("[{}]", urls.join(", "))
    }

    /// The cluster's directory (node logs are `n<i>.log` there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[i];
        if node.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("n{i}.log")))?;
        let child = Command::new(&self.exe)
            .arg("-c")
            .arg(&node.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", self.exe.display()))?;
        node.child = Some(child);
        Ok(())
    }

    /// Kills node `i` (SIGKILL: no goodbye to its peers).
    pub async fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut child) = self.nodes[i].child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// Restarts node `i` on its ports and storage, and waits until it takes
    /// clients.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.start_node(i)?;
        let addr = format!("127.0.0.1:{}", self.nodes[i].client_port);
        let deadline = Instant::now() + READY_WITHIN;
        while tokio::net::TcpStream::connect(&addr).await.is_err() {
            anyhow::ensure!(Instant::now() < deadline, "node n{i} did not come back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Kills every node.
    pub async fn kill_all(&mut self) -> anyhow::Result<()> {
        for i in 0..self.nodes.len() {
            self.kill(i).await?;
        }
        Ok(())
    }

    /// Restarts every node and waits until JetStream answers again.
    pub async fn restart_all(&mut self) -> anyhow::Result<()> {
        for i in 0..self.nodes.len() {
            self.start_node(i)?;
        }
        self.wait_ready().await
    }

    /// Waits until the cluster's JetStream can place a stream on every
    /// node (its meta leader elected, every peer in): a probe stream made
    /// and deleted.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_WITHIN;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.probe().await {
                Ok(()) => return Ok(()),
                Err(e) => last = format!("{e:#}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!(
            "the NATS cluster in {} was not ready within {} s: {last}",
            self.dir.path().display(),
            READY_WITHIN.as_secs()
        )
    }

    /// Deletes from `stream` the message holding ledger record `record`
    /// of `subject` (a message lost, for the tests of the gap report);
    /// returns the first and last records it held.
    pub async fn lose_record(
        &self,
        stream: &str,
        subject: &str,
        record: u64,
    ) -> anyhow::Result<(u64, u64)> {
        let client = async_nats::connect(self.urls()[0].as_str()).await?;
        let jetstream = async_nats::jetstream::new(client);
        let mut stream = jetstream.get_stream(stream).await?;
        let last = stream.info().await?.state.last_sequence;
        for sequence in 1..=last {
            let Ok(message) = stream.get_raw_message(sequence).await else {
                continue;
            };
            if message.subject.as_str() != subject {
                continue;
            }
            let records: Vec<u64> = message
                .payload
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .map(serde_json::from_slice::<serde_json::Value>)
                .collect::<Result<Vec<_>, _>>()?
                .iter()
                .filter_map(|v| v["record"].as_u64())
                .collect();
            if records.contains(&record) {
                anyhow::ensure!(stream.delete_message(sequence).await?, "not deleted");
                return Ok((records[0], records[records.len() - 1]));
            }
        }
        anyhow::bail!("record {record} of {subject} is not in the stream")
    }

    async fn probe(&self) -> anyhow::Result<()> {
        let mut options =
            async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(1));
        if let Some(tls) = &self.client_tls {
            options = options
                .require_tls(true)
                .add_root_certificates(tls.ca.clone())
                .add_client_certificate(tls.cert.clone(), tls.key.clone());
        }
        let client = options
            .connect(
                self.urls()
                    .iter()
                    .map(|u| u.parse())
                    .collect::<Result<Vec<async_nats::ServerAddr>, _>>()?,
            )
            .await?;
        let jetstream = async_nats::jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(2))
            .build(client);
        jetstream
            .create_stream(async_nats::jetstream::stream::Config {
                name: "LEGSYNC_TRIAL_PROBE".to_string(),
                subjects: vec!["legsync-trial-probe".to_string()],
                num_replicas: self.nodes.len(),
                storage: async_nats::jetstream::stream::StorageType::Memory,
                ..Default::default()
            })
            .await?;
        jetstream.delete_stream("LEGSYNC_TRIAL_PROBE").await?;
        Ok(())
    }
}
