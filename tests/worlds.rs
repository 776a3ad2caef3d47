//! The aggregator and notifier worlds are complete: the host loads a test
//! component of each, calls it, and gets the results the contract promises.

use std::sync::Arc;

use weir_host::manifest::{Grants, Limits};
use weir_host::plugin::{AggregatorPlugin, Batch, MemoryServices, NotifierPlugin, PluginError, Services};
use weir_tests::{artifacts, config, engine, sandbox};

fn amounts(records: &[(&str, &str)]) -> Batch {
    let mut b = Batch::with_capacity(records.len(), 16);
    for (key, amount) in records {
        b.push(key, 1_000, amount.as_bytes());
    }
    b
}

#[test]
fn an_aggregator_folds_states_the_host_keeps_and_emits_per_key() {
    let engine = engine();
    let compiled = engine.compile(artifacts::SUM_AGGREGATOR.as_ref()).expect("compile");
    let plugin = AggregatorPlugin::new(
        &engine,
        compiled,
        sandbox("sum-aggregator@0.1.0", Limits::default(), Grants::default()),
        vec![],
    )
    .expect("load");
    let mut instance = plugin.instantiate().expect("instantiate");

    // Two groups: c1 (index 0) and c2 (index 1), states start empty.
    let mut states = vec![vec![], vec![]];
    instance.fold(&amounts(&[("c1", "10"), ("c2", "5"), ("c1", "7")]), &[0, 1, 0], &mut states).expect("fold");
    assert!(states.iter().all(|s| !s.is_empty()), "{states:?}");
    // The host hands the states back in a later batch, even to a new instance.
    let mut other = plugin.instantiate().expect("second instance");
    other.fold(&amounts(&[("c2", "1")]), &[1], &mut states).expect("fold again");

    let keys = vec!["c1".to_owned(), "c2".to_owned(), "silent".to_owned()];
    let all = vec![states[0].clone(), states[1].clone(), vec![]];
    let out = other.emit(0, 600_000, &keys, &all).expect("emit");
    let results: Vec<(String, i64, String)> = out
        .records()
        .map(|r| (r.key.to_owned(), r.event_time_ms, String::from_utf8_lossy(r.payload).into_owned()))
        .collect();
    assert_eq!(
        results,
        vec![
            ("c1".into(), 599_999, "c1=17 (2 records)".into()),
            ("c2".into(), 599_999, "c2=6 (2 records)".into()),
            ("silent".into(), 599_999, "silent=0 (0 records)".into()),
        ]
    );

    // A record the plugin cannot fold fails the batch with its reason.
    let mut untouched = vec![states[0].clone()];
    let err = other.fold(&amounts(&[("c1", "ten")]), &[0], &mut untouched).expect_err("bad amount");
    assert!(matches!(&err, PluginError::Returned(m) if m.contains("`ten`")), "{err:?}");
    assert_eq!(untouched, [states[0].clone()], "a failed fold leaves the states as they were");
    // A group index out of range is refused by the plugin, not a crash.
    let err = other.fold(&amounts(&[("c1", "1")]), &[5], &mut [vec![]]).expect_err("bad group");
    assert!(matches!(err, PluginError::Returned(_)), "{err:?}");
}

#[test]
fn a_notifier_uses_state_tables_reference_tables_and_channels() {
    let engine = engine();
    let compiled = engine.compile(artifacts::ECHO_NOTIFIER.as_ref()).expect("compile");
    let plugin = NotifierPlugin::new(
        &engine,
        compiled,
        sandbox("echo-notifier@0.1.0", Limits::default(), Grants::default()),
        config(&[("threshold", "100")]),
    )
    .expect("load");
    let services = Arc::new(MemoryServices::default());
    services.set_reference("recipients", "c1", "app-user-1");
    let mut instance = plugin.instantiate(services.clone()).expect("instantiate");

    instance.consume(&amounts(&[("c1", "60"), ("c2", "10"), ("c1", "50")])).expect("consume");
    // Redelivery of the crossing batch (at-least-once) and a further crossing do not notify again.
    let mut again = plugin.instantiate(services.clone()).expect("second instance");
    again.consume(&amounts(&[("c1", "5")])).expect("consume");

    assert_eq!(services.get("totals", "c1").expect("get"), Some(b"115".to_vec()));
    assert_eq!(services.get("totals", "c2").expect("get"), Some(b"10".to_vec()));
    let sent = services.sent();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].recipient, "app-user-1");
    assert_eq!(sent[0].subject, "c1 crossed 100");
    assert_eq!(sent[0].idempotency_key, "c1-crossed-100");

    // The same idempotency key is never sent twice, whoever sends it.
    let duplicate = weir_host::notify::Notification { ..sent[0].clone() };
    assert_eq!(services.send(duplicate), Ok(false));

    let err = instance.consume(&amounts(&[("c3", "lots")])).expect_err("bad amount");
    assert!(matches!(&err, PluginError::Returned(m) if m.contains("amount")), "{err:?}");
}
