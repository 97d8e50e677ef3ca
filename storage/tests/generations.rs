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
