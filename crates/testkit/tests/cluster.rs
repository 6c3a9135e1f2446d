//! The test cluster itself: it forms, and it fails a killed primary over to its replica.

use herald_testkit::RedisCluster;

/// Six nodes form a cluster whose slots are served by three primaries, and a primary killed
/// with SIGKILL is replaced by its replica.
#[tokio::test]
async fn a_cluster_forms_and_fails_over() {
    let mut cluster = RedisCluster::start().await;
    assert_eq!(cluster.seeds().len(), 6);
    let slot = cluster.keyslot("foo").await;
    assert_eq!(slot, 12182, "CLUSTER KEYSLOT foo");
    let mut primaries = Vec::new();
    for slot in [0, 8000, 16383] {
        primaries.push(cluster.primary_of_slot(slot).await);
    }
    primaries.dedup();
    assert_eq!(primaries.len(), 3, "three primaries share the slots: {primaries:?}");
    let dead = cluster.primary_of_slot(slot).await;
    cluster.kill(dead).await;
    let promoted = cluster.wait_for_failover(slot, dead).await;
    assert_ne!(promoted, dead);
}
