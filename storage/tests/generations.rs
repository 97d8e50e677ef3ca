//! What the appliance keeps about snapshots and jobs: labels, holds, locks, the busy
//! mark and the job history, surviving a reopen.

mod common;
use common::*;
use storage::*;

#[test]
fn holds_and_locks_refuse_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let v = s.create_volume("vol", owner()).unwrap();
    let f = s.create(v.root, b"f", file_mode()).unwrap().ino;
    s.write(f, 0, b"one").unwrap();
    let now = Timespec::now().sec;
    let a = s
        .snapshot_with(
            "vol",
            "a",
            &SnapshotMeta {
                label: Some("nightly".into()),
                lock_until: now + 3600,
                busy: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(a.label.as_deref(), Some("nightly"));
    s.snapshot("vol", "b").unwrap();
    // Locked: nobody deletes it before its date.
    let e = s.delete_snapshot("vol", "a").unwrap_err();
    assert!(matches!(e, StoreError::Refused(_)), "{e}");
    assert!(e.to_string().contains("locked"), "{e}");
    // Held: refused until released.
    assert!(s.hold_snapshot("vol", "b", true).unwrap().held);
    let e = s.delete_snapshot("vol", "b").unwrap_err();
    assert!(e.to_string().contains("held"), "{e}");
    drop(s);
    let s = open(dir.path());
    let list = s.snapshots(Some("vol")).unwrap();
    assert_eq!(list.len(), 2);
    assert!(list[0].busy && list[0].lock_until == now + 3600);
    assert!(list[1].held && !list[1].busy && list[1].label.is_none());
    s.hold_snapshot("vol", "b", false).unwrap();
    s.delete_snapshot("vol", "b").unwrap();
    assert!(matches!(
        s.hold_snapshot("vol", "b", true),
        Err(StoreError::NotFound(_))
    ));
    // Labels are one printable line.
    let bad = SnapshotMeta {
        label: Some("two\nlines".into()),
        ..Default::default()
    };
    assert!(matches!(
        s.snapshot_with("vol", "c", &bad),
        Err(StoreError::Invalid(_))
    ));
}

#[test]
fn job_history_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create_volume("vol", owner()).unwrap();
    let mut j = JobRecord {
        kind: "snapshot".into(),
        volume: Some("vol".into()),
        started_ms: 1_000,
        ended_ms: 1_250,
        result: "ok".into(),
        snapshot: Some("s1".into()),
        freeze_ms: Some(12),
        window_ms: Some(9),
        output: "x".repeat(jobs::OUTPUT_TAIL + 10) + "END",
        ..Default::default()
    };
    let id1 = s.record_job(&j).unwrap();
    j.kind = "gc".into();
    j.volume = None;
    j.result = "failed".into();
    j.error = Some("disk full".into());
    let id2 = s.record_job(&j).unwrap();
    assert!(id2 > id1);
    drop(s);
    let s = open(dir.path());
    let all = s.jobs(None, 10).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].id, id2, "newest first");
    assert_eq!(all[0].error.as_deref(), Some("disk full"));
    let vol = s.jobs(Some("vol"), 10).unwrap();
    assert_eq!(vol.len(), 1);
    assert_eq!(vol[0].freeze_ms, Some(12));
    assert!(vol[0].output.ends_with("END"));
    assert!(vol[0].output.len() <= jobs::OUTPUT_TAIL);
    assert_eq!(s.jobs(None, 1).unwrap().len(), 1);
}

/// A generation that changed here and there reads back exactly, in windows through a
/// restore's stream cache, finding its unchanged chunks in the older generation's
/// bundles without looking each one up; a chunk verify quarantined still fails its
/// read.
#[test]
fn a_changed_generation_reads_back_from_older_bundles_with_few_lookups() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let v = s.create_volume("vol", owner()).unwrap();
    let f = s.create(v.root, b"dump.sql", file_mode()).unwrap().ino;
    let mut want = data(8 << 20, 5);
    s.write(f, 0, &want).unwrap();
    s.snapshot("vol", "one").unwrap();
    // Night two: 4 KiB rewritten every 300 KiB (new chunks between old ones).
    for at in (100_000..want.len() - 4096).step_by(300 << 10) {
        let patch = data(4096, at as u64);
        want[at..at + 4096].copy_from_slice(&patch);
        s.write(f, at as u64, &patch).unwrap();
    }
    s.snapshot("vol", "two").unwrap();
    drop(s);
    let s = open(dir.path());
    let read = |snap: &str| -> (Vec<u8>, u64) {
        let root = s.snapshot_root("vol", snap).unwrap();
        let e = s.snap_lookup(&root, b"dump.sql").unwrap();
        let before = s.stats().unwrap().chunk_lookups;
        let stream = StreamCache::new(4 << 20);
        let mut out = Vec::new();
        for off in (0..e.attr.size).step_by(1 << 20) {
            for p in s.snap_read_pieces(&e, off, 1 << 20, &stream).unwrap() {
                out.extend_from_slice(p.as_ref());
            }
        }
        (out, s.stats().unwrap().chunk_lookups - before)
    };
    let (two, lookups) = read("two");
    assert!(two == want, "generation two reads back as written");
    let chunks = (8 << 20) / (8 << 10);
    assert!(
        lookups < chunks / 4,
        "{lookups} lookups by id for ~{chunks} chunks"
    );
    let (one, _) = read("one");
    assert!(one == data(8 << 20, 5), "generation one is unchanged");
    drop(s);
    // A member in the middle of a bundle marked damaged (as verify marks what it could
    // not read), its bytes intact: the read is refused all the same.
    let db = rusqlite::Connection::open(dir.path().join("kura.db")).unwrap();
    let n = db
        .execute(
            "UPDATE chunks SET flags=1 WHERE id=(SELECT id FROM chunks WHERE inner_off>0
             ORDER BY pack, offset, inner_off LIMIT 1 OFFSET 200)",
            [],
        )
        .unwrap();
    assert_eq!(n, 1);
    drop(db);
    let s = open(dir.path());
    let root = s.snapshot_root("vol", "one").unwrap();
    let e = s.snap_lookup(&root, b"dump.sql").unwrap();
    let stream = StreamCache::new(4 << 20);
    let failed: Vec<String> = (0..e.attr.size)
        .step_by(1 << 20)
        .filter_map(|off| s.snap_read_pieces(&e, off, 1 << 20, &stream).err())
        .map(|e| e.to_string())
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].contains("quarantined"), "{failed:?}");
}

/// A READ of a snapshot file as shared pieces answers exactly what the copying read
/// answers: the same bytes (holes as zeros), the same length clipped at the end, the
/// same EOF flag.
#[test]
fn snapshot_reads_as_pieces_match_the_copying_read() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let v = s.create_volume("vol", owner()).unwrap();
    let f = s.create(v.root, b"sparse", file_mode()).unwrap().ino;
    s.write(f, 0, &data(1 << 20, 7)).unwrap();
    s.write(f, 5 << 20, &data(300_000, 8)).unwrap();
    s.create(v.root, b"empty", file_mode()).unwrap();
    s.snapshot("vol", "one").unwrap();
    let root = s.snapshot_root("vol", "one").unwrap();
    for name in [&b"sparse"[..], b"empty"] {
        let e = s.snap_lookup(&root, name).unwrap();
        let size = e.attr.size;
        for off in [
            0,
            1000,
            1 << 20,
            3 << 20,
            size.saturating_sub(10),
            size,
            size + 5,
        ] {
            for len in [1u32, 4096, 1 << 20] {
                let (want, eof) = s.snap_read(&e, off, len).unwrap();
                let (pieces, n, eof2) = s.snap_read_shared(&e, off, len).unwrap();
                let got: Vec<u8> = pieces.iter().flat_map(|p| p.as_ref().to_vec()).collect();
                assert_eq!((n, eof2), (want.len(), eof), "{name:?} at {off}+{len}");
                assert!(got == want, "{name:?} at {off}+{len}: bytes differ");
            }
        }
    }
    assert!(matches!(
        s.snap_read_shared(&root, 0, 10),
        Err(StoreError::IsDir(_))
    ));
}
