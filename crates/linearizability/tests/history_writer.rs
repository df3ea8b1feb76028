//! The history writer (`Event::to_line`) and parser agree: what the
//! simulator and drills write is what `phalanx check` reads.

use linearizability::{
    check, Event, EventType, Function, History, Limits, OpData, Outcome, Status,
};
use serde_json::Value;

#[test]
fn written_events_parse_back_into_the_same_operations() {
    let events = [
        Event::new(
            0,
            EventType::Invoke,
            Function::Write,
            "x",
            Value::from("1"),
            10,
        ),
        Event::new(
            1,
            EventType::Invoke,
            Function::Cas,
            "x",
            Event::cas_value(Some("1"), "2"),
            11,
        ),
        Event::new(0, EventType::Ok, Function::Write, "x", Value::from("1"), 20),
        Event::new(
            1,
            EventType::Ok,
            Function::Cas,
            "x",
            Event::cas_value(Some("1"), "2"),
            30,
        ),
        Event::new(2, EventType::Invoke, Function::Read, "x", Value::Null, 40),
        Event::new(2, EventType::Ok, Function::Read, "x", Value::from("2"), 50),
        Event::new(
            3,
            EventType::Invoke,
            Function::Cas,
            "y",
            Event::cas_value(None, "a"),
            60,
        ),
        Event::new(
            3,
            EventType::Info,
            Function::Cas,
            "y",
            Event::cas_value(None, "a"),
            70,
        ),
    ];
    let text: String = events.iter().map(|e| e.to_line() + "\n").collect();
    for (line, e) in text.lines().zip(&events) {
        assert_eq!(&serde_json::from_str::<Event>(line).unwrap(), e);
    }
    let h = History::parse_str(&text).unwrap();
    assert_eq!(h.ops.len(), 4);
    assert_eq!(
        h.ops[1].data,
        OpData::Cas {
            expected: Some("1".into()),
            new: "2".into()
        }
    );
    assert_eq!(h.ops[3].status, Status::Info);
    assert_eq!(
        h.ops[3].data,
        OpData::Cas {
            expected: None,
            new: "a".into()
        }
    );
    assert!(matches!(
        check(&h, &Limits::default()),
        Outcome::Linearizable
    ));
}

#[test]
fn a_written_stale_read_is_caught() {
    let lines: String = [
        Event::new(
            0,
            EventType::Invoke,
            Function::Write,
            "k",
            Value::from("new"),
            1,
        ),
        Event::new(
            0,
            EventType::Ok,
            Function::Write,
            "k",
            Value::from("new"),
            2,
        ),
        Event::new(1, EventType::Invoke, Function::Read, "k", Value::Null, 3),
        Event::new(1, EventType::Ok, Function::Read, "k", Value::Null, 4),
    ]
    .iter()
    .map(|e| e.to_line() + "\n")
    .collect();
    let h = History::parse_str(&lines).unwrap();
    assert!(matches!(
        check(&h, &Limits::default()),
        Outcome::NotLinearizable(_)
    ));
}
