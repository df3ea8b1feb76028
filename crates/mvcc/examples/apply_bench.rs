//! Quick apply-path throughput check: `cargo run --release -p mvcc --example apply_bench`.
use mvcc::{Command, PbPutRequest, PbRangeRequest, Store};
use std::time::Instant;

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("bench.redb")).unwrap();
    let batch_size = 64;
    let total = 100_000;
    let value = vec![b'x'; 256];
    for (label, durable) in [("non-durable", false), ("durable", true)] {
        let start = Instant::now();
        let mut i = 0u64;
        let n = if durable { total / 10 } else { total };
        while i < n {
            let batch: Vec<Option<Command>> = (0..batch_size)
                .map(|j| {
                    let k = format!("key/{:08}", (i + j) % 10_000);
                    Some(Command::put(&PbPutRequest {
                        key: k.into_bytes(),
                        value: value.clone(),
                        ..Default::default()
                    }))
                })
                .collect();
            s.apply_batch(&batch, b"meta", durable).unwrap();
            i += batch_size;
        }
        let el = start.elapsed();
        println!(
            "{label}: {n} puts in {el:?} = {:.0} puts/s (batch {batch_size})",
            n as f64 / el.as_secs_f64()
        );
    }
    let start = Instant::now();
    for i in 0..10_000u64 {
        let k = format!("key/{:08}", i % 10_000);
        let r = s
            .range(&PbRangeRequest {
                key: k.into_bytes(),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(r.kvs.len(), 1);
    }
    println!("10000 point reads in {:?}", start.elapsed());
    println!(
        "db size {} MiB, rev {}",
        s.db_size_bytes() >> 20,
        s.current_revision()
    );
}
