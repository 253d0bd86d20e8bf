//! The client commands: `taskforge login` keeps a private session, `taskforge tail` streams a
//! team's activities (or with `--inbox` the user's notifications) and resumes across a server
//! restart without losing or repeating any.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

fn client_command(config_home: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_taskforge"));
    for (k, _) in std::env::vars() {
        if k.starts_with("TASKFORGE_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("XDG_CONFIG_HOME", config_home).kill_on_drop(true);
    cmd
}

async fn login(config_home: &std::path::Path, url: &str, email: &str, password: &str) -> bool {
    login_with(client_command(config_home), url, email, password)
        .await
        .0
}

/// Runs `taskforge login` with the password on stdin: whether it succeeded, and its stderr.
async fn login_with(mut cmd: Command, url: &str, email: &str, password: &str) -> (bool, String) {
    let mut child = cmd
        .args(["login", "--url", url, "--email", email])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn taskforge login");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(format!("{password}\n").as_bytes())
        .await
        .expect("write password");
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("login finishes")
        .expect("login status");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn login_keeps_a_private_session_and_refuses_a_wrong_password() {
    let srv = TestServer::start(Backend::Sqlite).await;
    let api = srv.client();
    let email = unique_email("cli");
    api.register(&email, "correct horse battery", "Cli").await;
    let home = tempfile::tempdir().expect("tempdir");

    assert!(!login(home.path(), &srv.base, &email, "wrong password!").await);
    let file = home.path().join("taskforge/credentials.json");
    assert!(!file.exists(), "a failed login stores nothing");

    assert!(login(home.path(), &srv.base, &email, "correct horse battery").await);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file)
            .expect("credentials")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "credentials file mode {mode:o}");
        let dir = std::fs::metadata(file.parent().expect("dir")).expect("dir");
        assert_eq!(dir.permissions().mode() & 0o077, 0, "config dir is private");
    }
    let saved: Value = serde_json::from_slice(&std::fs::read(&file).expect("read")).expect("json");
    let session = &saved["sessions"][srv.base.as_str()];
    assert_eq!(session["email"], email.as_str());
    assert!(
        session["refreshToken"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );
}

#[tokio::test]
async fn login_refuses_to_replace_a_credentials_file_it_cannot_read() {
    let srv = TestServer::start(Backend::Sqlite).await;
    let api = srv.client();
    let email = unique_email("cli");
    api.register(&email, "correct horse battery", "Cli").await;
    let home = tempfile::tempdir().expect("tempdir");
    let file = home.path().join("taskforge/credentials.json");
    std::fs::create_dir_all(file.parent().expect("dir")).expect("config dir");
    // Two sessions of other servers, cut off before the end (say, a disk that filled up).
    let corrupt = br#"{
  "sessions": {
    "https://a.example": {"email": "a@example.com", "accessToken": "a1", "refreshToken": "a2"},
    "https://b.example": {"email": "b@example.com", "accessToken": "b1", "refreshToken": "b2"}
"#;
    std::fs::write(&file, corrupt).expect("write credentials");

    let (ok, stderr) = login_with(
        client_command(home.path()),
        &srv.base,
        &email,
        "correct horse battery",
    )
    .await;
    assert!(!ok, "login must fail; stderr:\n{stderr}");
    assert!(
        stderr.contains(&file.display().to_string()),
        "the message names the file; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("could not be read"),
        "the message says why; stderr:\n{stderr}"
    );
    assert_eq!(
        std::fs::read(&file).expect("read credentials"),
        corrupt.as_slice(),
        "the file is left byte for byte as it was"
    );
    let leftovers: Vec<_> = std::fs::read_dir(file.parent().expect("dir"))
        .expect("list config dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        leftovers,
        vec!["credentials.json"],
        "no temporary file left"
    );
}

#[tokio::test]
async fn tail_json_streams_every_activity_once_across_a_server_restart() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut srv = TestServer::start_with(Backend::Sqlite, &[("TASKFORGE_LISTEN", &listen)]).await;
    let api = srv.client();
    let email = unique_email("tail");
    let me = api.register(&email, "correct horse battery", "Tail").await;
    let team = api.create_team(me.token(), "tailed").await;
    let other = api.create_team(me.token(), "not tailed").await;
    let home = tempfile::tempdir().expect("tempdir");
    assert!(login(home.path(), &srv.base, &email, "correct horse battery").await);

    let mut tail = client_command(home.path())
        .args([
            "tail",
            "--url",
            &srv.base,
            "--team",
            &team.id.to_string(),
            // From the start of the log: the writes below may come before the tail subscribes.
            "--since",
            "0",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn taskforge tail");
    let mut lines = BufReader::new(tail.stdout.take().expect("stdout")).lines();
    let mut err_lines = BufReader::new(tail.stderr.take().expect("stderr")).lines();
    let tail_err = tokio::spawn(async move {
        let mut all = String::new();
        while let Ok(Some(l)) = err_lines.next_line().await {
            all.push_str(&l);
            all.push('\n');
        }
        all
    });

    let mut expected = Vec::new();
    for i in 0..10 {
        expected.push(
            api.task(me.token(), team.id, &format!("before {i}"))
                .await
                .id,
        );
        api.task(me.token(), other.id, "elsewhere").await;
    }
    // Read the first one so the tail is known to be subscribed before the restart.
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("a first line within 10 s")
        .expect("read")
        .expect("a line");
    srv.restart().await;
    assert_eq!(
        srv.base,
        format!("http://{listen}"),
        "same address after restart"
    );
    let api = srv.client();
    for i in 0..10 {
        expected.push(
            api.task(me.token(), team.id, &format!("after {i}"))
                .await
                .id,
        );
    }

    let mut got: Vec<Value> = vec![serde_json::from_str(&first).expect("json line")];
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < expected.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, lines.next_line()).await {
            Ok(Ok(Some(line))) => got.push(serde_json::from_str(&line).expect("json line")),
            _ => break,
        }
    }
    // Nothing more arrives (no duplicate of a replayed activity).
    if let Ok(Ok(Some(extra))) =
        tokio::time::timeout(Duration::from_millis(700), lines.next_line()).await
    {
        panic!("unexpected extra line: {extra}");
    }
    let _ = tail.kill().await;
    let tail_err = tail_err.await.unwrap_or_default();
    assert!(
        tail_err.contains("disconnected"),
        "the restart was noticed and resumed from; tail's stderr:\n{tail_err}"
    );
    let ids: Vec<String> = got
        .iter()
        .map(|a| a["taskId"].as_str().unwrap_or_default().to_owned())
        .collect();
    let want: Vec<String> = expected.iter().map(|id| id.to_string()).collect();
    assert_eq!(ids, want, "every activity of the team, once, in order");
    let seqs: Vec<i64> = got.iter().filter_map(|a| a["seq"].as_i64()).collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<i64>>(), "seqs 1..=20 in order");
    assert!(
        got.iter()
            .all(|a| a["teamId"] == team.id.to_string().as_str())
    );
}

/// A TLS-terminating proxy on 127.0.0.1 in front of `upstream` (plain HTTP), with a self-signed
/// certificate for 127.0.0.1 and localhost; returns its port and the certificate's PEM.
async fn tls_proxy(upstream: String) -> (u16, String) {
    use tokio_rustls::rustls;
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("self-signed certificate");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], key)
    .expect("server certificate");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the proxy");
    let port = listener.local_addr().expect("proxy addr").port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(upstream.as_str()).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (port, cert.pem())
}

#[tokio::test]
async fn login_and_tail_work_over_https_with_a_certificate_trusted_through_ssl_cert_file() {
    let srv = TestServer::start(Backend::Sqlite).await;
    let api = srv.client();
    let email = unique_email("tls");
    let me = api.register(&email, "correct horse battery", "Tls").await;
    let team = api.create_team(me.token(), "over tls").await;
    let upstream = srv
        .base
        .strip_prefix("http://")
        .expect("an http base")
        .to_owned();
    let (port, pem) = tls_proxy(upstream).await;
    let url = format!("https://127.0.0.1:{port}");
    let home = tempfile::tempdir().expect("tempdir");
    let ca = home.path().join("proxy-cert.pem");
    std::fs::write(&ca, pem).expect("write the certificate");
    // Trust exactly the proxy's certificate, the way a private CA is added in practice.
    let command = || {
        let mut cmd = client_command(home.path());
        cmd.env("SSL_CERT_FILE", &ca).env_remove("SSL_CERT_DIR");
        cmd
    };

    // Not trusted without it: the certificate really is what SSL_CERT_FILE adds.
    let (ok, stderr) = login_with(
        client_command(home.path()),
        &url,
        &email,
        "correct horse battery",
    )
    .await;
    assert!(!ok, "an unknown certificate is refused");
    assert!(stderr.contains("certificate"), "stderr:\n{stderr}");

    let (ok, stderr) = login_with(command(), &url, &email, "correct horse battery").await;
    assert!(ok, "login over https; stderr:\n{stderr}");

    let mut tail = command()
        .args(["tail", "--url", &url, "--team", &team.id.to_string()])
        .args(["--since", "0", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn taskforge tail");
    let mut lines = BufReader::new(tail.stdout.take().expect("stdout")).lines();
    let mut err_lines = BufReader::new(tail.stderr.take().expect("stderr")).lines();
    let task = api.task(me.token(), team.id, "seen through tls").await;
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await;
    let _ = tail.kill().await;
    let Ok(Ok(Some(line))) = line else {
        let mut err = String::new();
        while let Ok(Ok(Some(l))) =
            tokio::time::timeout(Duration::from_millis(200), err_lines.next_line()).await
        {
            err.push_str(&l);
            err.push('\n');
        }
        panic!("no activity from tail over https within 20 s; its stderr:\n{err}");
    };
    let activity: Value = serde_json::from_str(&line).expect("json line");
    assert_eq!(activity["type"], "task.created");
    assert_eq!(activity["taskId"], task.id.to_string().as_str());
    assert_eq!(activity["teamId"], team.id.to_string().as_str());
}

/// A running `taskforge tail`: its stdout lines, and its stderr gathered in the background.
struct Tailing {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    stderr: tokio::task::JoinHandle<String>,
}

impl Tailing {
    fn spawn(mut cmd: Command, args: &[&str]) -> Tailing {
        let mut child = cmd
            .arg("tail")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn taskforge tail");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut err_lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let stderr = tokio::spawn(async move {
            let mut all = String::new();
            while let Ok(Some(l)) = err_lines.next_line().await {
                all.push_str(&l);
                all.push('\n');
            }
            all
        });
        Tailing {
            child,
            lines,
            stderr,
        }
    }

    /// The next `n` lines, within 20 s in all; panics with tail's stderr if they do not come.
    async fn take(&mut self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut got = Vec::new();
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.lines.next_line()).await {
                Ok(Ok(Some(line))) => got.push(line),
                _ => {
                    let _ = self.child.kill().await;
                    let err = (&mut self.stderr).await.unwrap_or_default();
                    panic!(
                        "{} of {n} lines within 20 s: {got:#?}\ntail's stderr:\n{err}",
                        got.len()
                    );
                }
            }
        }
        got
    }

    /// Fails if another line comes within 700 ms (nothing printed twice).
    async fn assert_quiet(&mut self) {
        if let Ok(Ok(Some(extra))) =
            tokio::time::timeout(Duration::from_millis(700), self.lines.next_line()).await
        {
            panic!("unexpected extra line: {extra}");
        }
    }

    async fn stop(mut self) -> String {
        let _ = self.child.kill().await;
        self.stderr.await.unwrap_or_default()
    }
}

/// Runs `taskforge tail` expecting it to fail: its stderr.
async fn tail_fails(cmd: Command, args: &[&str]) -> String {
    let mut t = Tailing::spawn(cmd, args);
    let status = tokio::time::timeout(Duration::from_secs(30), t.child.wait())
        .await
        .expect("tail exits within 30 s")
        .expect("tail status");
    assert!(!status.success(), "tail must fail");
    t.stderr.await.unwrap_or_default()
}

#[tokio::test]
async fn tail_without_url_follows_the_latest_login_finds_the_team_by_name_and_prints_names() {
    let srv = TestServer::start(Backend::Sqlite).await;
    let api = srv.client();
    let email = unique_email("ann");
    let ann = api
        .register(&email, "correct horse battery", "Ann Tail")
        .await;
    let team = api.create_team(ann.token(), "Core").await;
    api.create_team(ann.token(), "Core Two").await;
    let bob = api
        .member(ann.token(), team.id, "Bob Builder", "member")
        .await;
    let home = tempfile::tempdir().expect("tempdir");
    // An older session of another server, sorting after this one: the latest login wins, not the
    // first entry.
    let file = home.path().join("taskforge/credentials.json");
    std::fs::create_dir_all(file.parent().expect("dir")).expect("config dir");
    let other = r#"{"sessions": {"http://zz.invalid": {"email": "z@example.com", "accessToken": "z1", "refreshToken": "z2"}}}"#;
    std::fs::write(&file, other).expect("write credentials");
    assert!(login(home.path(), &srv.base, &email, "correct horse battery").await);

    // No --url, and the team by its name in another case.
    let mut tail = Tailing::spawn(
        client_command(home.path()),
        &["--team", "cORE", "--since", "0"],
    );
    api.task(bob.token(), team.id, "by bob").await;
    let first = tail.take(2).await;
    // A member who joins while the tail runs is named too: the table follows member.added.
    let cid = api
        .member(ann.token(), team.id, "Cid Newcomer", "member")
        .await;
    api.task(cid.token(), team.id, "by cid").await;
    let later = tail.take(2).await;
    let err = tail.stop().await;
    let lines: Vec<String> = first.into_iter().chain(later).collect();
    assert!(
        lines[0].starts_with("#1 ") && lines[0].contains("member.added by Ann Tail"),
        "{lines:#?}\n{err}"
    );
    assert!(
        lines[1].contains("task.created by Bob Builder \"by bob\""),
        "{lines:#?}"
    );
    assert!(lines[2].contains("member.added by Ann Tail"), "{lines:#?}");
    assert!(
        lines[3].contains("task.created by Cid Newcomer \"by cid\""),
        "{lines:#?}"
    );
    for id in [ann.user.id, bob.user.id, cid.user.id] {
        assert!(
            lines.iter().all(|l| !l.contains(&id.to_string())),
            "no uuid printed for an actor: {lines:#?}"
        );
    }
}

#[tokio::test]
async fn tail_by_team_name_explains_an_unknown_or_ambiguous_name() {
    let srv = TestServer::start(Backend::Sqlite).await;
    let api = srv.client();
    let email = unique_email("twin");
    let me = api.register(&email, "correct horse battery", "Twin").await;
    let a = api.create_team(me.token(), "Twins").await;
    let b = api.create_team(me.token(), "twins").await;
    let solo = api.create_team(me.token(), "Solo").await;
    let home = tempfile::tempdir().expect("tempdir");
    assert!(login(home.path(), &srv.base, &email, "correct horse battery").await);

    let err = tail_fails(client_command(home.path()), &["--team", "TWINS"]).await;
    assert!(err.contains("2 of your teams are named"), "stderr:\n{err}");
    assert!(
        err.contains(&a.id.to_string()) && err.contains(&b.id.to_string()),
        "both matches listed with their ids; stderr:\n{err}"
    );
    assert!(
        !err.contains(&solo.id.to_string()),
        "only the matches; stderr:\n{err}"
    );

    let err = tail_fails(client_command(home.path()), &["--team", "Nobody's"]).await;
    assert!(err.contains("no team named \"Nobody's\""), "stderr:\n{err}");
    for t in [&a, &b, &solo] {
        assert!(
            err.contains(&t.id.to_string()),
            "the user's teams are listed; stderr:\n{err}"
        );
    }
}

#[tokio::test]
async fn tail_all_prints_task_edits_and_comments_each_once_in_seq_order() {
    let srv = TestServer::start(Backend::Sqlite).await;
    let api = srv.client();
    let email = unique_email("all");
    let me = api.register(&email, "correct horse battery", "All").await;
    let team = api.create_team(me.token(), "Everything").await;
    let early = api.task(me.token(), team.id, "there before the tail").await;
    let home = tempfile::tempdir().expect("tempdir");
    assert!(login(home.path(), &srv.base, &email, "correct horse battery").await);

    let mut tail = Tailing::spawn(
        client_command(home.path()),
        &["--team", "Everything", "--all", "--since", "0", "--json"],
    );
    // Once the first line is out, the tail has listed and joined the rooms there are.
    let mut lines = tail.take(1).await;
    let tok = me.token();
    api.patch_task(tok, early.id, serde_json::json!({"title": "edited"}))
        .await
        .ok(200);
    api.comment(tok, early.id, "on the early task").await;
    // A board and a task that appear while it runs are followed from their announcement.
    let board = api.create_board(tok, team.id, "Later").await;
    let late = api
        .create_task(
            tok,
            team.id,
            serde_json::json!({"title": "late", "boardId": board.id}),
        )
        .await;
    api.patch_task(tok, late.id, serde_json::json!({"status": "done"}))
        .await
        .ok(200);
    api.comment(tok, late.id, "on the late task").await;
    lines.extend(tail.take(6).await);
    tail.assert_quiet().await;
    let err = tail.stop().await;

    let got: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let kinds: Vec<&str> = got
        .iter()
        .map(|a| a["type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        kinds,
        [
            "task.created",
            "task.updated",
            "comment.created",
            "board.created",
            "task.created",
            "task.updated",
            "comment.created"
        ],
        "stderr:\n{err}"
    );
    let seqs: Vec<i64> = got.iter().filter_map(|a| a["seq"].as_i64()).collect();
    assert_eq!(
        seqs,
        (1..=7).collect::<Vec<i64>>(),
        "each once, in seq order"
    );
    let tasks: Vec<&str> = got
        .iter()
        .map(|a| a["taskId"].as_str().unwrap_or(""))
        .collect();
    let (e, l) = (early.id.to_string(), late.id.to_string());
    assert_eq!(tasks[1..3], [e.as_str(), e.as_str()]);
    assert_eq!(tasks[4..7], [l.as_str(), l.as_str(), l.as_str()]);
}

/// `@[Name](user:<id>)`: how a text mentions a user.
fn mention(u: &AuthResponse) -> String {
    format!("@[{}](user:{})", u.user.display_name, u.id())
}

/// The `#<seq>` of a human-readable inbox line (after the unread mark).
fn inbox_seq(line: &str) -> i64 {
    line.get(2..)
        .and_then(|l| l.strip_prefix('#'))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no #seq at the start of {line:?}"))
}

#[tokio::test]
async fn tail_inbox_prints_recent_then_live_notifications_and_resumes_across_a_restart() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut srv = TestServer::start_with(Backend::Sqlite, &[("TASKFORGE_LISTEN", &listen)]).await;
    let api = srv.client();
    let email = unique_email("inbox");
    let ann = api
        .register(&email, "correct horse battery", "Ann Inbox")
        .await;
    let team = api.create_team(ann.token(), "Inboxed").await;
    let bob = api
        .member(ann.token(), team.id, "Bob Sender", "member")
        .await;
    // Before the tail starts: an assignment Ann has read, then an unread mention.
    let task = api
        .create_task(
            bob.token(),
            team.id,
            serde_json::json!({"title": "Review the plan", "assigneeUserId": ann.id()}),
        )
        .await;
    let first = api.all_notifications(ann.token()).await;
    let read = api
        .mark_read(ann.token(), serde_json::json!({"ids": [first[0]["id"]]}))
        .await;
    api.comment(
        bob.token(),
        task.id,
        &format!("{} first look", mention(&ann)),
    )
    .await;
    let home = tempfile::tempdir().expect("tempdir");
    assert!(login(home.path(), &srv.base, &email, "correct horse battery").await);

    // No --team: the inbox is the logged-in user's.
    let mut tail = Tailing::spawn(client_command(home.path()), &["--inbox"]);
    let mut lines = tail.take(2).await;
    assert!(
        lines[0].starts_with("  #1 ")
            && lines[0].ends_with(" Bob Sender assigned you to \"Review the plan\""),
        "the recent ones, oldest first, a read one unmarked: {lines:#?}"
    );
    assert!(
        lines[1].starts_with("* #3 ")
            && lines[1].ends_with(
                " Bob Sender mentioned you and commented on \"Review the plan\": \"@Ann Inbox first look\""
            ),
        "an unread one marked, with its reasons and excerpt: {lines:#?}"
    );

    // Live: only the socket can bring this one.
    api.comment(bob.token(), task.id, &format!("{} live one", mention(&ann)))
        .await;
    lines.extend(tail.take(1).await);
    assert!(
        lines[2].starts_with("* #4 ") && lines[2].ends_with(": \"@Ann Inbox live one\""),
        "{lines:#?}"
    );

    // Cut the connection; what happens meanwhile and afterwards comes once each, in order.
    srv.restart().await;
    assert_eq!(srv.base, format!("http://{listen}"), "same address");
    let api = srv.client();
    api.comment(
        bob.token(),
        task.id,
        &format!("{} after the cut", mention(&ann)),
    )
    .await;
    api.patch_task(bob.token(), task.id, serde_json::json!({"status": "done"}))
        .await
        .ok(200);
    let notifications = api.all_notifications(ann.token()).await;
    let upto = notifications[1]["seq"].as_i64().expect("a seq");
    let marked = api
        .mark_read(ann.token(), serde_json::json!({"upto": upto}))
        .await;
    lines.extend(tail.take(3).await);
    tail.assert_quiet().await;
    let err = tail.stop().await;
    assert!(
        err.contains("disconnected"),
        "the restart was noticed; stderr:\n{err}"
    );
    // Marked unread if it came live, not if the tail reconnected after the mark-read (a replay
    // shows a notification as it stands then); the mark-read follows either way.
    assert!(
        (lines[3].starts_with("* #5 ") || lines[3].starts_with("  #5 "))
            && lines[3].ends_with(": \"@Ann Inbox after the cut\""),
        "{lines:#?}"
    );
    assert!(
        lines[4].starts_with("* #6 ")
            && lines[4].ends_with(" Bob Sender changed the status of \"Review the plan\""),
        "{lines:#?}"
    );
    assert_eq!(
        lines[5],
        format!("  #7 marked read: up to #{upto}; 1 unread")
    );

    // Every event of Ann's stream but the mark-read before the tail started, once, in order:
    // the notifications the server holds and the later mark-read.
    let mut want: Vec<i64> = notifications
        .iter()
        .filter_map(|n| n["seq"].as_i64())
        .chain(marked["seq"].as_i64())
        .collect();
    want.sort_unstable();
    assert_eq!(read["seq"], 2, "the mark-read before the tail took seq 2");
    let got: Vec<i64> = lines.iter().map(|l| inbox_seq(l)).collect();
    assert_eq!(got, want, "{lines:#?}");
    assert_eq!(got, [1, 3, 4, 5, 6, 7]);
    for id in [ann.id(), bob.id(), task.id] {
        assert!(
            lines.iter().all(|l| !l.contains(&id.to_string())),
            "names and titles, no uuids: {lines:#?}"
        );
    }
}

#[tokio::test]
async fn tail_inbox_json_replays_after_since_and_recent_shows_the_newest_oldest_first() {
    let srv = TestServer::start(Backend::Sqlite).await;
    let api = srv.client();
    let email = unique_email("inboxjson");
    let ann = api
        .register(&email, "correct horse battery", "Ann Json")
        .await;
    let team = api.create_team(ann.token(), "Json").await;
    let bob = api.member(ann.token(), team.id, "Bob", "member").await;
    let task = api
        .create_task(
            bob.token(),
            team.id,
            serde_json::json!({"title": "T", "assigneeUserId": ann.id()}),
        )
        .await;
    api.comment(bob.token(), task.id, &format!("{} see", mention(&ann)))
        .await;
    let assigned = api.all_notifications(ann.token()).await[1].clone();
    assert_eq!(assigned["seq"], 1);
    api.mark_read(ann.token(), serde_json::json!({"ids": [assigned["id"]]}))
        .await;
    api.comment(bob.token(), task.id, "no mention").await;
    let home = tempfile::tempdir().expect("tempdir");
    assert!(login(home.path(), &srv.base, &email, "correct horse battery").await);

    // After seq 1: the socket replays seqs 2 to 4, then goes on live.
    let mut tail = Tailing::spawn(
        client_command(home.path()),
        &["--inbox", "--since", "1", "--json"],
    );
    let mut lines = tail.take(3).await;
    api.comment(bob.token(), task.id, "live").await;
    lines.extend(tail.take(1).await);
    tail.assert_quiet().await;
    tail.stop().await;
    let got: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let kinds: Vec<(&str, i64)> = got
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or(""),
                e["seq"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("notification.created", 2),
            ("notification.read", 3),
            ("notification.created", 4),
            ("notification.created", 5)
        ]
    );
    assert_eq!(got[1]["ids"], serde_json::json!([assigned["id"]]));
    assert_eq!(
        got[0]["notification"]["reasons"],
        serde_json::json!(["mentioned", "commented"])
    );
    assert_eq!(
        got[2]["notification"]["reasons"],
        serde_json::json!(["commented"])
    );
    assert_eq!(got[3]["notification"]["excerpt"], "live");

    // A fresh start without --since: the newest two, oldest first, in the shape of the stream.
    let mut tail = Tailing::spawn(
        client_command(home.path()),
        &["--inbox", "--recent", "2", "--json"],
    );
    let recent = tail.take(2).await;
    tail.assert_quiet().await;
    tail.stop().await;
    let recent: Vec<Value> = recent
        .iter()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let server = api.all_notifications(ann.token()).await;
    for (line, n) in recent.iter().zip([&server[1], &server[0]]) {
        assert_eq!(line["type"], "notification.created");
        assert_eq!(line["seq"], n["seq"]);
        assert_eq!(
            &line["notification"], n,
            "the notification as the server lists it"
        );
    }
    assert_eq!(recent[1]["seq"], 5);
}

/// Runs `taskforge import` (bounded): whether it succeeded, its stdout and its stderr.
async fn import(cmd: Command, args: &[&str]) -> (bool, String, String) {
    let mut cmd = cmd;
    cmd.arg("import").args(args);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("import finishes")
        .expect("import runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A CSV of 1,250 rows imported in batches of 500 after an interrupted run of its first 350:
/// every row once, the second run finds the first's, members by email, labels created once.
#[tokio::test]
async fn import_resumes_a_csv_without_doubling_a_row() {
    let srv = TestServer::start(Backend::Sqlite).await;
    let api = srv.client();
    let email = unique_email("importer");
    let owner = api
        .register(&email, "correct horse battery", "Importer")
        .await;
    let team = api.create_team(owner.token(), "Imported").await;
    let dev = api.member(owner.token(), team.id, "Dev", "member").await;
    let home = tempfile::tempdir().expect("tempdir");
    assert!(login(home.path(), &srv.base, &email, "correct horse battery").await);

    let mut csv = String::from("title,description,status,priority,assignee,due,labels,comments\n");
    for i in 0..1250 {
        let assignee = match i % 3 {
            0 => dev.user.email.clone(),
            1 => "nobody@example.com".to_owned(),
            _ => String::new(),
        };
        csv.push_str(&format!(
            "Row {i},\"line one, {i}\",{},high,{assignee},2027-01-{:02},bug;UI,\"first\n---\nsecond\"\n",
            if i % 2 == 0 { "done" } else { "In progress" },
            i % 28 + 1
        ));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (full_file, part_file) = (dir.path().join("all.csv"), dir.path().join("part.csv"));
    std::fs::write(&full_file, &csv).expect("write");
    // The interrupted run had the first 350 rows (the quoted comments span lines: cut before a
    // row's start).
    let cut_at = csv.match_indices("\nRow 350,").next().expect("row 350").0 + 1;
    std::fs::write(&part_file, &csv[..cut_at]).expect("write");

    let team_arg = team.id.to_string();
    let args = |file: &std::path::Path| {
        vec![
            "--team".to_owned(),
            team_arg.clone(),
            "--batch".to_owned(),
            "500".to_owned(),
            file.display().to_string(),
        ]
    };
    let run = |file: std::path::PathBuf| {
        let cmd = client_command(home.path());
        let a = args(&file);
        async move {
            let refs: Vec<&str> = a.iter().map(String::as_str).collect();
            import(cmd, &refs).await
        }
    };
    let (ok, out, err) = run(part_file).await;
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("350 created, 0 imported before"), "{out}");
    let (ok, out, err) = run(full_file.clone()).await;
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("900 created, 350 imported before"), "{out}");
    assert!(
        err.contains("nobody@example.com is not a member of the team"),
        "{err}"
    );

    let tasks = api
        .all_pages(
            owner.token(),
            &format!("/api/v1/teams/{}/tasks?limit=200", team.id),
        )
        .await;
    assert_eq!(tasks.len(), 1250, "every row once");
    let titles: std::collections::HashSet<&str> =
        tasks.iter().filter_map(|t| t["title"].as_str()).collect();
    assert_eq!(titles.len(), 1250);
    let labels = api
        .all_pages(owner.token(), &format!("/api/v1/teams/{}/labels", team.id))
        .await;
    let mut names: Vec<&str> = labels.iter().filter_map(|l| l["name"].as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["UI", "bug"],
        "created once, by their first spelling"
    );
    let row0 = tasks.iter().find(|t| t["title"] == "Row 0").expect("row 0");
    assert_eq!(row0["assigneeUserId"], serde_json::json!(dev.id()));
    assert_eq!(row0["status"], "done");
    assert_eq!(row0["dueDate"], "2027-01-01");
    assert_eq!(row0["labelIds"].as_array().map(Vec::len), Some(2));
    let row1 = tasks.iter().find(|t| t["title"] == "Row 1").expect("row 1");
    assert_eq!(row1["status"], "in_progress");
    assert!(row1["assigneeUserId"].is_null());
    let comments = api
        .get(
            &format!(
                "/api/v1/tasks/{}/comments",
                row1["id"].as_str().expect("id")
            ),
            owner.token(),
        )
        .await
        .ok(200)["items"]
        .clone();
    assert_eq!(comments.as_array().map(Vec::len), Some(2), "{comments}");

    // A third run changes nothing.
    let seq = api.team_seq(owner.token(), team.id).await;
    let (ok, out, _) = run(full_file).await;
    assert!(ok);
    assert!(out.contains("0 created, 1250 imported before"), "{out}");
    assert_eq!(api.team_seq(owner.token(), team.id).await, seq);
}
