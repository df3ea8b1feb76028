//! Space amplification probe: bytes on disk per byte of live data.
//! `cargo run --release -p mvcc --example space -- PUTS VALUE_BYTES KEYS BATCH DURABLE_EVERY`
use etcd_client::proto::PbPutRequest;
use prost::Message;

fn main() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect();
    let (puts, vbytes, keys, batch, durable_every) = (a[0], a[1], a[2], a[3], a[4]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.redb");
    let store = mvcc::Store::open(&path).unwrap();
    let mut seed = 0x9E3779B97F4A7C15u64;
    let mut items = vec![];
    let mut n = 0;
    for i in 0..puts {
        let mut v = vec![0u8; vbytes];
        for b in v.iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = seed as u8;
        }
        let req = PbPutRequest {
            key: format!("k-{:08}", i % keys).into_bytes(),
            value: v,
            ..Default::default()
        };
        items.push(Some(mvcc::Command::Put(req.encode_to_vec())));
        if items.len() == batch || i + 1 == puts {
            n += 1;
            let durable = durable_every > 0 && n % durable_every == 0;
            store.apply_batch(&items, b"meta", durable).unwrap();
            items.clear();
        }
    }
    let live = keys.min(puts) * (vbytes + 11);
    let s = store.db_size().unwrap();
    use std::os::unix::fs::MetadataExt;
    let blocks = std::fs::metadata(&path).unwrap().blocks() * 512;
    println!(
        "puts {puts} value {vbytes} keys {keys} batch {batch} durable_every {durable_every}: live {live} file {} ({:.2}x) blocks {blocks} ({:.2}x) in_use {} ({:.2}x)",
        s.file_bytes,
        s.file_bytes as f64 / live as f64,
        blocks as f64 / live as f64,
        s.in_use_bytes,
        s.in_use_bytes as f64 / live as f64
    );
}
