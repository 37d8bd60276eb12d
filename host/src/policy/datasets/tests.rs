use super::build::build;
use super::*;
use std::path::Path;

fn dataset(kind: DatasetKind, text: &str) -> Dataset {
    build("fixture", kind, Path::new("fixture"), text.as_bytes()).unwrap()
}

fn error(kind: DatasetKind, text: &str) -> String {
    build(
        "fixture",
        kind,
        Path::new("data/fixture.map"),
        text.as_bytes(),
    )
    .unwrap_err()
    .to_string()
}

#[test]
fn a_set_answers_exactly_with_non_ascii_keys() {
    let set = dataset(
        DatasetKind::Set,
        "# blocked numbers\n15145550100\n\nÉcole-Numéro\n+33 1 23 45\n15145550100\n日本\n",
    );
    assert_eq!(set.entries(), 4, "duplicates and comments are not keys");
    for key in ["15145550100", "École-Numéro", "+33 1 23 45", "日本"] {
        assert!(set.contains(key.as_bytes()), "{key}");
        assert_eq!(set.get(key.as_bytes()), Some(""), "{key}");
    }
    for key in ["1514555010", "151455501000", "Ecole-Numero", "日", ""] {
        assert!(!set.contains(key.as_bytes()), "{key}");
    }
}

#[test]
fn a_map_gives_each_key_its_value() {
    let map = dataset(
        DatasetKind::Map,
        "15145550100,CARRIER_B\n15145550101, CARRIER_C \n\"1514,5550102\",\"Opérateur, Ltd\"\n15145550100,CARRIER_B\n",
    );
    assert_eq!(map.entries(), 3);
    assert_eq!(map.get(b"15145550100"), Some("CARRIER_B"));
    assert_eq!(
        map.get(b"15145550101"),
        Some("CARRIER_C"),
        "fields are trimmed"
    );
    assert_eq!(
        map.get(b"1514,5550102"),
        Some("Opérateur, Ltd"),
        "CSV quoting"
    );
    assert_eq!(map.get(b"1514555010"), None);
}

#[test]
fn the_longest_of_overlapping_prefixes_wins() {
    let table = dataset(
        DatasetKind::PrefixTable,
        "1,nanp\n1900,premium\n19005,premium-5\n44,uk\n447,uk-mobile\n日,cjk\n日本,japan\n",
    );
    let lpm = |key: &str| table.longest_prefix(key.as_bytes());
    assert_eq!(lpm("15145550100"), Some((1, "nanp")));
    assert_eq!(lpm("19001234"), Some((4, "premium")));
    assert_eq!(lpm("190051234"), Some((5, "premium-5")));
    assert_eq!(lpm("1900"), Some((4, "premium")), "a key equal to a prefix");
    assert_eq!(lpm("190"), Some((1, "nanp")));
    assert_eq!(lpm("447700900"), Some((3, "uk-mobile")));
    assert_eq!(lpm("4420"), Some((2, "uk")));
    assert_eq!(lpm("4"), None);
    assert_eq!(lpm("33123"), None);
    assert_eq!(lpm("日本語"), Some(("日本".len(), "japan")));
    assert_eq!(lpm("日曜"), Some(("日".len(), "cjk")));
    assert_eq!(lpm(""), None);
    assert!(!table.contains(b"190051234"), "contains is exact");
    assert!(table.contains(b"19005"));
}

#[test]
fn unsorted_and_sorted_files_answer_the_same() {
    let sorted = dataset(DatasetKind::Map, "1,a\n2,b\n3,c\n");
    let unsorted = dataset(DatasetKind::Map, "3,c\n1,a\n2,b\n");
    for key in ["0", "1", "2", "3", "4", "12"] {
        assert_eq!(
            sorted.get(key.as_bytes()),
            unsorted.get(key.as_bytes()),
            "{key}"
        );
    }
    assert_eq!(unsorted.get(b"3"), Some("c"));
    assert_ne!(
        sorted.version(),
        unsorted.version(),
        "the file is the version"
    );
    assert_eq!(sorted.version().len(), 16);
}

#[test]
fn a_bad_line_is_named_with_its_number() {
    let err = error(DatasetKind::Map, "1,a\n2,b\n3\n4,d\n");
    assert_eq!(
        err,
        "data/fixture.map:3: expected 2 fields (key,value), found 1"
    );
    let err = error(DatasetKind::Map, "1,a\n# c\n2,b\n1,z\n");
    assert_eq!(
        err,
        "data/fixture.map:4: key \"1\" has the value \"z\" here and \"a\" on line 1"
    );
    let err = error(DatasetKind::Set, "1\n,\n");
    assert!(
        err.starts_with("data/fixture.map:2: expected 1 field"),
        "{err}"
    );
    let err = build(
        "fixture",
        DatasetKind::Set,
        Path::new("data/fixture.set"),
        b"1\n\xff\xfe\n",
    )
    .unwrap_err()
    .to_string();
    assert_eq!(err, "data/fixture.set:2: the key is not UTF-8");
    let long = format!("1,{}\n", "v".repeat(MAX_VALUE_BYTES + 1));
    let err = error(DatasetKind::Map, &long);
    assert!(err.contains(":1: value of 1025 bytes"), "{err}");
}

#[test]
fn a_numbers_index_is_smaller_than_its_file() {
    // 100,000 ten-digit numbers, as a block list exports them.
    let text: String = (0..100_000u64)
        .map(|i| format!("{}\n", 5_145_550_000u64 + i * 7))
        .collect();
    let set = dataset(DatasetKind::Set, &text);
    assert_eq!(set.entries(), 100_000);
    assert!(
        set.bytes() * 2 < text.len() as u64,
        "{} bytes for a {}-byte file",
        set.bytes(),
        text.len()
    );
}
