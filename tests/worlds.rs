//! The aggregator and notifier worlds are complete: the host loads a test
//! component of each, calls it, and gets the results the contract promises.

use std::sync::Arc;

use weir_host::manifest::{Grants, Limits, Resource, Uses};
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

    // A record the plugin cannot fold fails the call, naming the record and why.
    let mut untouched = vec![states[0].clone()];
    let err = other.fold(&amounts(&[("c1", "1"), ("c1", "ten")]), &[0, 0], &mut untouched).expect_err("bad amount");
    assert!(matches!(&err, PluginError::BadRecord { index: 1, reason } if reason.contains("`ten`")), "{err:?}");
    assert_eq!(untouched, [states[0].clone()], "a failed fold leaves the states as they were");
    // A group index out of range is refused by the plugin, not a crash.
    let err = other.fold(&amounts(&[("c1", "1")]), &[5], &mut [vec![]]).expect_err("bad group");
    assert!(matches!(err, PluginError::Returned(_)), "{err:?}");
}

/// What a pipeline grants echo-notifier set up as the tests set it: the resources its config names.
fn echo_uses() -> Uses {
    let mut uses = Uses::default();
    uses.add(Resource::StateTable, "totals".into());
    uses.add(Resource::Reference, "recipients".into());
    uses.add(Resource::Channel, "inbox".into());
    uses
}

fn echo_notifier(settings: &[(&str, &str)]) -> NotifierPlugin {
    let engine = engine();
    let compiled = engine.compile(artifacts::ECHO_NOTIFIER.as_ref()).expect("compile");
    let grants = Grants { uses: echo_uses(), ..Grants::default() };
    NotifierPlugin::new(&engine, compiled, sandbox("echo-notifier@0.1.0", Limits::default(), grants), config(settings))
        .expect("load")
}

#[test]
fn a_notifier_uses_state_tables_reference_tables_and_channels() {
    let plugin = echo_notifier(&[("threshold", "100"), ("recipients", "recipients")]);
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

    // A record that is no amount is the record's fault, and the plugin says which one.
    let err = instance.consume(&amounts(&[("c3", "1"), ("c3", "lots")])).expect_err("bad amount");
    assert!(matches!(&err, PluginError::BadRecord { index: 1, reason } if reason.contains("amount")), "{err:?}");
}

#[test]
fn a_notifier_reaches_only_the_tables_and_channels_its_config_names() {
    // `peek` names a table through a plain string key: not declared, so refused.
    let plugin = echo_notifier(&[("peek", "customers")]);
    let services = Arc::new(MemoryServices::default());
    services.put("customers", "c1", b"secret".to_vec()).expect("put");
    let mut instance = plugin.instantiate(services.clone()).expect("instantiate");
    let err = instance.consume(&amounts(&[("c1", "5")])).expect_err("undeclared table");
    let PluginError::Returned(message) = &err else { panic!("{err:?}") };
    assert!(message.contains("may not use state table `customers`"), "{message}");
    assert!(message.contains("it may use"), "says what it may use: {message}");

    // A channel the pipeline did not grant is refused the same way.
    let plugin = echo_notifier(&[("threshold", "1"), ("channel", "elsewhere")]);
    let mut instance = plugin.instantiate(services.clone()).expect("instantiate");
    let err = instance.consume(&amounts(&[("c9", "5")])).expect_err("undeclared channel");
    assert!(err.to_string().contains("may not use channel `elsewhere`"), "{err}");
    assert!(services.sent().is_empty(), "nothing was sent: {:?}", services.sent());
}

#[test]
fn plugin_test_reports_a_record_the_plugin_calls_bad_and_goes_on() {
    let target = weir_host::author::TestTarget::resolve(&weir_tests::root().join("tests/guests/echo-notifier"), false)
        .expect("the plugin folder");
    let input: Vec<String> = ["60", "lots", "50"].map(String::from).to_vec();
    let report = weir_host::author::run_test(&engine(), &target, Some(&input), &[("threshold".into(), "100".into())])
        .expect("a report, not an error")
        .text;
    assert!(report.contains("record 2: bad record: amount"), "{report}");
    // 60 + 50 crosses 100 once the bad record is out of the way (records of `--input` have no key).
    assert!(report.contains("inbox ->  [-crossed-100]"), "{report}");
    assert!(report.ends_with("3 records, 1 set aside, 1 notifications\n"), "{report}");
}

#[test]
fn plugin_test_names_the_record_a_transformer_traps_on_and_goes_on_with_the_others() {
    let target = weir_host::author::TestTarget::resolve(&weir_tests::root().join("tests/guests/hostile"), false)
        .expect("the plugin folder");
    let input: Vec<String> = ["calm", "boom", "quiet"].map(String::from).to_vec();
    let report =
        weir_host::author::run_test(&engine(), &target, Some(&input), &[("mode".into(), "trap-on-boom".into())])
            .expect("a report, not an error");
    let text = &report.text;
    assert!(text.starts_with("the batch failed ("), "{text}");
    assert!(text.contains("record 1: ok, 1 out\n  CALM\n"), "{text}");
    assert!(text.contains("record 2: failed: plugin trapped"), "{text}");
    assert!(text.contains("record 3: ok, 1 out\n  QUIET\n"), "{text}");
    assert!(text.ends_with("3 records, 0 set aside, 1 failed\n"), "{text}");
    assert_eq!(report.failed, 1, "the caller exits non-zero");
}
