//! Scaled deployment smoke: three instances on one PostgreSQL database and one Redis.

use crate::common::*;

#[tokio::test]
async fn an_activity_written_on_one_instance_reaches_a_socket_on_another() {
    let Some(cluster) = Cluster::start(3, &[]).await else {
        return;
    };
    let (a, b) = (cluster.node(0), cluster.node(1));
    let api_a = a.client();
    let owner = api_a.new_user("owner").await;
    let team = api_a.create_team(owner.token(), "t").await;
    let mut ws = b.ws(owner.token()).await;
    ws.subscribe_team(team.id, None).await;
    let task = api_a.task(owner.token(), team.id, "x").await;
    let got = ws.expect_type("activity").await;
    assert_eq!(
        got["activity"]["taskId"],
        serde_json::json!(task.id),
        "{got}"
    );
}
