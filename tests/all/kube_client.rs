//! A second, independent client: the kube crate lists, creates, server-side applies and watches.

use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};

use crate::harness::Cluster;

async fn client(c: &Cluster) -> kube::Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&c.kubeconfig).unwrap(),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    kube::Client::try_from(config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_lists_creates_applies_and_watches() {
    let c = Cluster::start();
    let client = client(&c).await;
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "32")
    );

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let names: Vec<String> = namespaces
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    for n in ["default", "kube-system", "kube-public"] {
        assert!(names.contains(&n.to_owned()), "{names:?}");
    }

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut watch = cms
        .watch(&WatchParams::default().timeout(10), "0")
        .await
        .unwrap()
        .boxed();

    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("from-kube".into());
    cm.metadata.labels = Some([("made-by".to_owned(), "kube".to_owned())].into());
    cm.data = Some([("a".to_owned(), "1".to_owned())].into());
    let created = cms.create(&PostParams::default(), &cm).await.unwrap();
    assert!(created.metadata.uid.is_some() && created.metadata.resource_version.is_some());

    let err = cms.create(&PostParams::default(), &cm).await.unwrap_err();
    match err {
        kube::Error::Api(status) => assert_eq!(
            (status.code, status.reason.as_str()),
            (409, "AlreadyExists")
        ),
        other => panic!("expected a 409 Status, got {other:?}"),
    }

    let patch = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"}, "data": {"x": "y"}});
    let applied = cms
        .patch(
            "applied",
            &PatchParams::apply("kube-test"),
            &Patch::Apply(&patch),
        )
        .await
        .unwrap();
    assert_eq!(applied.data.unwrap()["x"], "y");

    let listed = cms
        .list(&ListParams::default().labels("made-by=kube"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);

    let mut seen = Vec::new();
    while seen.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            WatchEvent::Added(cm) => seen.push(cm.metadata.name.unwrap()),
            WatchEvent::Bookmark(_) => {}
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert_eq!(seen, ["from-kube", "applied"]);

    let missing = cms.get("nope").await.unwrap_err();
    assert!(
        matches!(missing, kube::Error::Api(ref s) if s.code == 404),
        "{missing:?}"
    );
}
