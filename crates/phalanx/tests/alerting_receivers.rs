//! Receivers of issue 13 against real servers: an alert reaches a real
//! Alertmanager (Debian's prometheus-alertmanager) through its v2 API, a
//! real SMTP server (aiosmtpd from the test virtualenv) as an email, and a
//! Slack-compatible incoming webhook (a recording HTTP server) — while a
//! fourth receiver that never answers retries with backoff, is counted, is
//! recorded as a `notification_failed` event, and delays none of the others.

mod support;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use support::alerts::{get_json, set_doc};
use support::servers::{start_alertmanager, test_python, Proc, Recorder};
use support::{free_port, http_get, wait_for, Cluster};

/// Bound on one notification attempt in this test (`--alerting-notification-timeout-ms`).
const ATTEMPT_TIMEOUT_MS: u64 = 1_500;
/// Attempts before a notification is given up (`--alerting-notification-attempts`).
const ATTEMPTS: u32 = 3;

fn maildir_messages(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["new", "cur"] {
        if let Ok(rd) = std::fs::read_dir(dir.join(sub)) {
            for e in rd.flatten() {
                out.push(std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
    }
    out
}

#[test]
fn alertmanager_email_and_slack_receive_while_a_hanging_receiver_retries() {
    let api = free_port();
    let c = Cluster::start_with(1, move |_| {
        vec![
            format!("--alerting-listen=127.0.0.1:{api}"),
            "--alerting-scrape-interval-ms=300".into(),
            "--alerting-evaluation-interval-ms=300".into(),
            format!("--alerting-notification-timeout-ms={ATTEMPT_TIMEOUT_MS}"),
            format!("--alerting-notification-attempts={ATTEMPTS}"),
        ]
    });
    let dir = c.dir.path().to_path_buf();
    let eps = c.endpoints();

    // Real servers.
    let (mut am, am_port) = start_alertmanager(&dir);
    let smtp_port = free_port();
    let maildir = dir.join("maildir");
    let mut smtp = Proc::start(
        "aiosmtpd",
        test_python().to_str().unwrap(),
        &[
            "-m".into(),
            "aiosmtpd".into(),
            "-n".into(),
            "-l".into(),
            format!("127.0.0.1:{smtp_port}"),
            "-c".into(),
            "aiosmtpd.handlers.Mailbox".into(),
            maildir.to_str().unwrap().into(),
        ],
        dir.join("aiosmtpd.log"),
    );
    wait_for("aiosmtpd listening", Duration::from_secs(20), || {
        smtp.assert_running();
        std::net::TcpStream::connect(("127.0.0.1", smtp_port))
            .ok()
            .map(|_| ())
    });
    let slack = Recorder::start(200);
    // Accepts connections (kernel backlog) and never answers: every attempt times out.
    let hang = TcpListener::bind("127.0.0.1:0").unwrap();
    let hang_port = hang.local_addr().unwrap().port();

    set_doc(
        &dir,
        "rules",
        "rules.yml",
        "groups:\n- name: test\n  rules:\n  - alert: ReceiverTest\n    expr: vector(1) > 0\n    labels:\n      severity: page\n    annotations:\n      summary: \"receivers are wired\"\n",
        &eps,
    );
    let am_yml = format!(
        r#"route:
  receiver: all
  group_by: [alertname]
  group_wait: 0s
  group_interval: 1h
  repeat_interval: 4h
  routes:
  - receiver: hanging
    continue: true
    matchers: ['alertname="ReceiverTest"']
  - receiver: all
    matchers: ['alertname="ReceiverTest"']
receivers:
- name: all
  alertmanager_configs:
  - url: http://127.0.0.1:{am_port}
  email_configs:
  - to: oncall@example.com
    from: phalanx@example.com
    smarthost: 127.0.0.1:{smtp_port}
    require_tls: false
    headers:
      X-Phalanx-Status: '{{{{ .Status }}}}'
  slack_configs:
  - api_url: http://127.0.0.1:{slack_port}/services/T000/B000/XXX
    channel: '#ops'
    username: phalanx
    text: '{{{{ .CommonAnnotations.summary }}}} ({{{{ .Alerts | len }}}} alerts)'
- name: hanging
  webhook_configs:
  - url: http://127.0.0.1:{hang_port}/never
"#,
        slack_port = slack.port
    );
    set_doc(&dir, "config", "alertmanager.yml", &am_yml, &eps);
    let configured = Instant::now();

    // 1. Alertmanager has the alert, through POST /api/v2/alerts.
    let am_alert = wait_for(
        "the alert at the real Alertmanager",
        Duration::from_secs(20),
        || {
            am.assert_running();
            let v = get_json(am_port, "/api/v2/alerts")?;
            v.as_array()?
                .iter()
                .find(|a| a["labels"]["alertname"] == "ReceiverTest")
                .cloned()
        },
    );
    let am_at = configured.elapsed();
    assert_eq!(am_alert["labels"]["severity"], "page", "{am_alert}");
    assert_eq!(
        am_alert["annotations"]["summary"], "receivers are wired",
        "{am_alert}"
    );
    assert_eq!(am_alert["status"]["state"], "active", "{am_alert}");

    // 2. The email, through SMTP.
    let mail = wait_for("the email at aiosmtpd", Duration::from_secs(20), || {
        smtp.assert_running();
        maildir_messages(&maildir).into_iter().next()
    });
    let mail_at = configured.elapsed();
    assert!(
        mail.contains("Subject: [FIRING:1] ReceiverTest (page)"),
        "subject: {mail}"
    );
    assert!(mail.contains("To: oncall@example.com"), "{mail}");
    assert!(mail.contains("X-Phalanx-Status: firing"), "{mail}");
    assert!(mail.contains("receivers are wired"), "{mail}");

    // 3. Slack's JSON.
    let msg = wait_for("the Slack message", Duration::from_secs(20), || {
        slack.all().into_iter().next()
    });
    let slack_at = configured.elapsed();
    assert_eq!(msg.path, "/services/T000/B000/XXX");
    assert_eq!(msg.body["channel"], "#ops", "{}", msg.body);
    assert_eq!(msg.body["username"], "phalanx", "{}", msg.body);
    let att = &msg.body["attachments"][0];
    assert_eq!(
        att["title"], "[FIRING:1] ReceiverTest (page)",
        "{}",
        msg.body
    );
    assert_eq!(
        att["text"], "receivers are wired (1 alerts)",
        "{}",
        msg.body
    );
    assert_eq!(att["color"], "danger", "{}", msg.body);

    // 4. The hanging receiver: given up after ATTEMPTS attempts, each bounded,
    // with backoff between them — long after the others were served.
    let failed = wait_for(
        "the notification_failed event of the hanging receiver",
        Duration::from_secs(30),
        || {
            let v = get_json(api, "/api/v1/events?since=10m")?;
            v["data"]
                .as_array()?
                .iter()
                .find(|e| e["kind"] == "notification_failed")
                .cloned()
        },
    );
    let failed_at = configured.elapsed();
    assert_eq!(failed["labels"]["receiver"], "hanging", "{failed}");
    assert_eq!(failed["labels"]["integration"], "webhook", "{failed}");
    let m = failed["message"].as_str().unwrap();
    assert!(
        m.contains(&format!("after {ATTEMPTS} attempts")) && m.contains("timed out"),
        "{m}"
    );
    let slowest_ok = am_at.max(mail_at).max(slack_at);
    let min_failure = Duration::from_millis(ATTEMPT_TIMEOUT_MS * u64::from(ATTEMPTS));
    assert!(
        failed_at >= min_failure && slowest_ok < Duration::from_millis(ATTEMPT_TIMEOUT_MS),
        "the others must not wait for the hanging receiver: alertmanager {am_at:?}, email {mail_at:?}, slack {slack_at:?}, failure {failed_at:?}"
    );
    let (_, metrics) = http_get(api, "/metrics").unwrap();
    let failures = metrics
        .lines()
        .find(|l| {
            l.starts_with("phalanx_alerting_integration_notification_failures_total{integration=\"webhook\",receiver=\"hanging\"}")
        })
        .unwrap_or_else(|| panic!("no failure counter in:\n{metrics}"));
    assert!(failures.ends_with(&format!(" {ATTEMPTS}")), "{failures}");
    for (kind, recv) in [("alertmanager", "all"), ("email", "all"), ("slack", "all")] {
        let l = format!(
            "phalanx_alerting_integration_notifications_total{{integration=\"{kind}\",receiver=\"{recv}\"}} 1"
        );
        assert!(metrics.contains(&l), "no `{l}` in:\n{metrics}");
    }
    eprintln!(
        "receivers: alertmanager {am_at:?}, email {mail_at:?}, slack {slack_at:?}; hanging receiver given up after {failed_at:?}"
    );
    drop(hang);
}
