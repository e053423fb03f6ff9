//! Secrets (a SASL password, an S3 secret key) come from the environment or a file and
//! never show in output, JSON, logs or error messages; a secret written in clear in the
//! config is refused.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testbed::{Broker, S3Server};

use crate::{code, stderr};

const FROM_FILE: &str = "kafka-pass-from-file-9f2c41";
const FROM_ENV: &str = "s3-secret-from-env-7a1d88";

/// Runs haven for at most `limit`, then kills it; its exit code (None if killed),
/// stdout and stderr together.
fn run(args: &[&str], env: &[(&str, String)], limit: Duration) -> (Option<i32>, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_haven"));
    c.args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("HAVEN_LOG", "debug,rdkafka=debug,librdkafka=debug");
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = child.wait_with_output().unwrap();
    (
        status,
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn secrets_from_env_and_files_never_show_in_output_logs_or_errors() {
    let b = Broker::start().unwrap();
    b.create_topic("payments", 1).unwrap();
    let s3 = S3Server::start().expect("start garage");
    s3.create_bucket("backups").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pass = dir.path().join("kafka.pass");
    std::fs::write(&pass, format!("{FROM_FILE}\n")).unwrap();
    let opts: Vec<String> = s3
        .options()
        .into_iter()
        .filter(|(k, _)| *k != "aws_secret_access_key")
        .map(|(k, v)| format!("{k} = \"{v}\""))
        .collect();
    let real_secret = s3
        .options()
        .into_iter()
        .find(|(k, _)| *k == "aws_secret_access_key")
        .map(|(_, v)| v)
        .unwrap();
    let cfg = dir.path().join("haven.toml");
    let write = |s3_secret_env: &str| {
        std::fs::write(
            &cfg,
            format!(
                "[clusters.sasl]\nbootstrap = \"{b}\"\n\
                 properties = {{ \"security.protocol\" = \"SASL_PLAINTEXT\", \"sasl.mechanism\" = \"PLAIN\", \"sasl.username\" = \"haven\" }}\n\
                 secret_properties = {{ \"sasl.password\" = \"file:{pass}\" }}\n\
                 [clusters.plain]\nbootstrap = \"{b}\"\n\
                 [repositories.main]\nurl = \"s3://backups/prod\"\noptions = {{ {opts} }}\n\
                 secret_options = {{ aws_secret_access_key = \"env:{s3_secret_env}\" }}\n\
                 [jobs.sasl]\nkind = \"backup\"\ncluster = \"sasl\"\nrepository = \"main\"\ntopics = \"payments\"\n\
                 [jobs.plain]\nkind = \"backup\"\ncluster = \"plain\"\nrepository = \"main\"\ntopics = \"payments\"\n",
                b = b.bootstrap(),
                pass = pass.display(),
                opts = opts.join(", "),
            ),
        )
        .unwrap();
    };
    write("HAVEN_TEST_S3_SECRET");
    let cfg_s = cfg.display().to_string();
    let env = [("HAVEN_TEST_S3_SECRET", real_secret.clone())];
    let leaks = |what: &str, text: &str| {
        for s in [FROM_FILE, FROM_ENV, real_secret.as_str()] {
            assert!(!text.contains(s), "{what} shows a secret:\n{text}");
        }
    };
    let limit = Duration::from_secs(60);

    // The config as Haven understood it shows references, never values.
    for args in [
        vec!["--config", &cfg_s, "config", "check"],
        vec!["--config", &cfg_s, "--json", "config", "check"],
    ] {
        let (c, out) = run(&args, &env, limit);
        assert_eq!(c, Some(0), "{out}");
        leaks("config check", &out);
        assert!(out.contains("sasl.password"), "{out}");
    }
    // A backup through the secret S3 key works, with debug logs, and shows neither.
    let (c, out) = run(
        &[
            "--config", &cfg_s, "-v", "--json", "backup", "--once", "--job", "plain",
        ],
        &env,
        limit,
    );
    assert_eq!(c, Some(0), "{out}");
    leaks("backup with debug logs", &out);
    // A SASL handshake the broker does not speak, and a wrong S3 secret: errors and logs
    // name the settings, never the values.
    let (_, out) = run(
        &[
            "--config", &cfg_s, "-v", "--json", "backup", "--once", "--job", "sasl",
        ],
        &env,
        Duration::from_secs(20),
    );
    leaks("a failing SASL backup", &out);
    let wrong = [("HAVEN_TEST_S3_SECRET", FROM_ENV.to_string())];
    let (c, out) = run(
        &["--config", &cfg_s, "-v", "--json", "ls", "--repo", "main"],
        &wrong,
        limit,
    );
    assert_ne!(c, Some(0), "a wrong secret key is refused: {out}");
    leaks("a wrong S3 secret", &out);
    // An unset variable is named (exit 2), a secret in clear refused (exit 2).
    let (c, out) = run(&["--config", &cfg_s, "ls", "--repo", "main"], &[], limit);
    assert_eq!(c, Some(2), "{out}");
    assert!(out.contains("HAVEN_TEST_S3_SECRET"), "{out}");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "\"sasl.username\" = \"haven\"",
        &format!("\"sasl.username\" = \"haven\", \"sasl.password\" = \"{FROM_ENV}\""),
    );
    std::fs::write(&cfg, text).unwrap();
    let out = crate::haven(&["--config", &cfg_s, "config", "check"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("secret_properties"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains(FROM_ENV), "{}", stderr(&out));
}
