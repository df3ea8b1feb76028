//! CSV and label-file reading: accepted quirks and typed errors naming the line.

use anomaly::csv::{self, Strictness};
use anomaly::Error;

fn read(text: &str, s: Strictness) -> Result<Vec<csv::Row>, Error> {
    csv::read_series(text.as_bytes(), "x.csv", s)
}

#[test]
fn accepts_crlf_missing_final_newline_and_repeated_timestamps() {
    let rows = read(
        "timestamp,value\r\n2014-07-01 00:00:00,1.5\r\n2014-07-01 00:00:00,2\r\n2014-07-01 00:05:00,-3e2",
        Strictness::Strict,
    )
    .unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].timestamp, "2014-07-01 00:00:00");
    assert_eq!(rows[0].ts, rows[1].ts);
    assert_eq!(rows[2].ts - rows[1].ts, 300);
    assert_eq!(rows[2].value, -300.0);
}

#[test]
fn bad_timestamp_names_the_line() {
    let e = read(
        "timestamp,value\n2014-07-01 00:00:00,1\n2014-07-32 00:05:00,2\n",
        Strictness::Strict,
    )
    .unwrap_err();
    assert!(matches!(e, Error::BadTimestamp { line: 3, .. }), "{e:?}");
    assert!(e.to_string().starts_with("x.csv:3:"), "{e}");
    let e = read("timestamp,value\nyesterday,1\n", Strictness::Strict).unwrap_err();
    assert!(matches!(e, Error::BadTimestamp { line: 2, .. }), "{e:?}");
}

#[test]
fn non_numeric_value_names_the_line() {
    let e = read(
        "timestamp,value\n2014-07-01 00:00:00,1\n2014-07-01 00:05:00,abc\n",
        Strictness::Strict,
    )
    .unwrap_err();
    assert!(matches!(e, Error::BadNumber { line: 3, .. }), "{e:?}");
    assert!(
        e.to_string().contains("x.csv:3:") && e.to_string().contains("abc"),
        "{e}"
    );
    let e = read("timestamp,value\n2014-07-01 00:00:00\n", Strictness::Strict).unwrap_err();
    assert!(matches!(e, Error::MissingColumn { line: 2, .. }), "{e:?}");
}

#[test]
fn backward_step_is_an_error_unless_allowed() {
    let text =
        "timestamp,value\n2014-07-01 00:05:00,1\n2014-07-01 00:10:00,2\n2014-07-01 00:00:00,3\n";
    let e = read(text, Strictness::Strict).unwrap_err();
    assert!(matches!(e, Error::OutOfOrder { line: 4, .. }), "{e:?}");
    assert!(e.to_string().contains("x.csv:4:"), "{e}");
    assert_eq!(read(text, Strictness::AllowBackward).unwrap().len(), 3);
}

#[test]
fn missing_header_is_an_error() {
    let e = read("2014-07-01 00:00:00,1\n", Strictness::Strict).unwrap_err();
    assert!(matches!(e, Error::BadHeader { line: 1, .. }), "{e:?}");
}

#[test]
fn nab_quirky_files_load() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/nab/data");
    let m = root.join("realKnownCause/machine_temperature_system_failure.csv");
    assert!(matches!(
        csv::read_series_file(&m, Strictness::Strict),
        Err(Error::OutOfOrder { .. })
    ));
    assert_eq!(
        csv::read_series_file(&m, Strictness::AllowBackward)
            .unwrap()
            .len(),
        22695
    );
    let taxi = csv::read_series_file(
        &root.join("realKnownCause/nyc_taxi.csv"),
        Strictness::Strict,
    )
    .unwrap();
    assert_eq!(taxi.len(), 10320);
    let crlf = csv::read_series_file(
        &root.join("realKnownCause/rogue_agent_key_hold.csv"),
        Strictness::Strict,
    )
    .unwrap();
    assert_eq!(crlf.len(), 1882);
}

#[test]
fn results_reader_uses_the_first_three_columns() {
    let rows = csv::read_results(
        "timestamp,value,anomaly_score,label,S(t)_standard\n2014-07-01 00:00:00,1,0.25,0,0.1\n"
            .as_bytes(),
        "r.csv",
    )
    .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].score, 0.25);
    let e = csv::read_results(
        "timestamp,value,anomaly_score\n2014-07-01 00:00:00,1,x\n".as_bytes(),
        "r.csv",
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::BadNumber {
                line: 2,
                column: "anomaly_score",
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn label_file_parses_and_rejects_garbage() {
    let l = csv::parse_labels(
        r#"{"a/b.csv": [["2014-04-10 07:15:00.000000", "2014-04-11 16:45:00.000000"]], "c/d.csv": []}"#,
        "l.json",
    )
    .unwrap();
    assert_eq!(l["a/b.csv"].len(), 1);
    assert_eq!(l["a/b.csv"][0].1 - l["a/b.csv"][0].0, 33 * 3600 + 30 * 60);
    assert!(l["c/d.csv"].is_empty());
    assert!(csv::parse_labels(r#"{"a": [["2014-04-10 07:15:00"]]}"#, "l.json").is_err());
    assert!(csv::parse_labels(r#"{"a": [["nope", "2014-04-10 07:15:00"]]}"#, "l.json").is_err());
}

#[test]
fn detect_csv_outputs_one_row_per_input_row() {
    let mut text = String::from("timestamp,value\n");
    for i in 0..500 {
        let v = if i == 400 { 100.0 } else { (i % 7) as f64 };
        text.push_str(&format!(
            "{},{v}\n",
            csv::format_timestamp(1_400_000_000 + i * 300)
        ));
    }
    for m in anomaly::METHODS {
        let out = anomaly::detect_csv(text.as_bytes(), "t.csv", m, Strictness::Strict).unwrap();
        assert_eq!(out.len(), 500);
        assert!(out.iter().all(|d| (0.0..=1.0).contains(&d.score)), "{m}");
        assert_eq!(out[400].value, 100.0);
    }
    let out =
        anomaly::detect_csv(text.as_bytes(), "t.csv", "ensemble", Strictness::Strict).unwrap();
    // The spike raises the one alarm, at once or a sample later (the
    // likelihood stage tests a 20-sample average of raw scores, which the
    // spike and the drop after it both raise).
    let alarms: Vec<usize> = (0..out.len()).filter(|&i| out[i].score >= 0.5).collect();
    assert!(
        alarms.len() == 1 && (400..=401).contains(&alarms[0]),
        "alarms {alarms:?}"
    );
    let mut buf = Vec::new();
    anomaly::write_detections(&mut buf, &out[..2]).unwrap();
    assert!(String::from_utf8(buf)
        .unwrap()
        .starts_with("timestamp,value,anomaly_score\n"));
    assert!(matches!(
        anomaly::detect_csv(text.as_bytes(), "t.csv", "nope", Strictness::Strict),
        Err(Error::UnknownMethod(_))
    ));
}
