//! The `etcd-client` crate drives the same operations as the etcdctl test.

mod support;

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, LeaseTimeToLiveOptions,
    MemberAddOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp, WatchOptions,
};
use support::*;

#[test]
fn etcd_client_crate_kv_txn_watch_lease_cluster_maintenance() {
    let mut c = Cluster::start(3, &[]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let eps = c.endpoint_list();
    let new_idx = c.new_member("n4");
    let new_peer = c.members[new_idx].peer_url();
    rt.block_on(async {
        let mut cl = Client::connect(eps.clone(), None).await.unwrap();
        let r1 = cl
            .put("a", "1", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        cl.put("a", "2", Some(PutOptions::new().with_prev_key()))
            .await
            .unwrap();
        for k in ["p/3", "p/1", "p/2"] {
            cl.put(k, k, None).await.unwrap();
        }
        // get: prefix, limit, sort, revision
        let r = cl
            .get("p/", Some(GetOptions::new().with_prefix().with_limit(2)))
            .await
            .unwrap();
        assert_eq!(
            r.kvs()
                .iter()
                .map(|kv| kv.key_str().unwrap())
                .collect::<Vec<_>>(),
            ["p/1", "p/2"]
        );
        assert!(r.more());
        assert_eq!(r.count(), 3);
        let r = cl
            .get(
                "p/",
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_sort(SortTarget::Create, SortOrder::Descend),
                ),
            )
            .await
            .unwrap();
        assert_eq!(
            r.kvs()
                .iter()
                .map(|kv| kv.key_str().unwrap())
                .collect::<Vec<_>>(),
            ["p/2", "p/1", "p/3"]
        );
        let r = cl
            .get("a", Some(GetOptions::new().with_revision(r1)))
            .await
            .unwrap();
        assert_eq!(r.kvs()[0].value(), b"1");
        let r = cl
            .get("a", Some(GetOptions::new().with_serializable()))
            .await
            .unwrap();
        assert_eq!(r.kvs()[0].version(), 2);
        // delete with prev_kv
        let d = cl
            .delete(
                "p/",
                Some(DeleteOptions::new().with_prefix().with_prev_key()),
            )
            .await
            .unwrap();
        assert_eq!(d.deleted(), 3);
        assert_eq!(d.prev_kvs().len(), 3);
        // txn
        let t = Txn::new()
            .when(vec![Compare::version("a", CompareOp::Equal, 2)])
            .and_then(vec![TxnOp::put("t", "yes", None), TxnOp::get("a", None)])
            .or_else(vec![TxnOp::put("t", "no", None)]);
        let tr = cl.txn(t).await.unwrap();
        assert!(tr.succeeded());
        assert_eq!(cl.get("t", None).await.unwrap().kvs()[0].value(), b"yes");
        // watch from a past revision
        let mut ws = cl
            .watch("a", Some(WatchOptions::new().with_start_revision(r1)))
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut wid = None;
        while got.len() < 2 {
            let resp = tokio::time::timeout(Duration::from_secs(10), ws.message())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            wid = Some(resp.watch_id());
            got.extend(
                resp.events()
                    .iter()
                    .map(|e| e.kv().unwrap().value().to_vec()),
            );
        }
        assert_eq!(got, [b"1".to_vec(), b"2".to_vec()]);
        ws.cancel(wid.unwrap()).await.unwrap();
        let canceled = tokio::time::timeout(Duration::from_secs(10), ws.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(canceled.canceled());
        // leases
        let lease = cl.lease_grant(30, None).await.unwrap().id();
        cl.put("lk", "v", Some(PutOptions::new().with_lease(lease)))
            .await
            .unwrap();
        let (mut keeper, mut stream) = cl.lease_keep_alive(lease).await.unwrap();
        keeper.keep_alive().await.unwrap();
        let ka = stream.message().await.unwrap().unwrap();
        assert_eq!(ka.ttl(), 30);
        let ttl = cl
            .lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .unwrap();
        assert_eq!(ttl.granted_ttl(), 30);
        assert!(ttl.ttl() > 25);
        assert_eq!(ttl.keys(), [b"lk".to_vec()]);
        assert!(cl
            .leases()
            .await
            .unwrap()
            .leases()
            .iter()
            .any(|l| l.id() == lease));
        cl.lease_revoke(lease).await.unwrap();
        assert!(cl.get("lk", None).await.unwrap().kvs().is_empty());
        // cluster
        let members = cl.member_list().await.unwrap();
        assert_eq!(members.members().len(), 3);
        let added = cl
            .member_add(
                [new_peer.clone()],
                Some(MemberAddOptions::new().with_is_learner()),
            )
            .await
            .unwrap();
        let id = added.member().unwrap().id();
        assert!(added.member().unwrap().is_learner());
        // The client round-robins over the members and a member list is
        // served from the answering member's applied state (serializable, as
        // in etcd 3.4): another member may apply the change a moment later.
        let probe = cl.clone();
        let sees = |n: usize| {
            let mut cl = probe.clone();
            async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                loop {
                    let got = cl.member_list().await.unwrap().members().len();
                    if got == n || tokio::time::Instant::now() > deadline {
                        return got;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        assert_eq!(sees(4).await, 4);
        cl.member_remove(id).await.unwrap();
        assert_eq!(sees(3).await, 3);
        // maintenance
        for ep in &eps {
            let mut one = Client::connect(vec![ep.clone()], None).await.unwrap();
            let st = one.status().await.unwrap();
            assert!(st.leader() != 0);
            assert!(st.raft_index() > 0);
            let h = one.hash_kv(0).await.unwrap();
            assert!(h.header().unwrap().revision() > 0);
        }
        let mut snap = cl.snapshot().await.unwrap();
        let mut bytes = 0usize;
        while let Some(part) = snap.message().await.unwrap() {
            bytes += part.blob().len();
        }
        assert!(
            bytes > 32 && (bytes - 32).is_multiple_of(512),
            "snapshot of {bytes} bytes is not etcd-shaped"
        );
    });
    c.members[new_idx].child = None;
}
