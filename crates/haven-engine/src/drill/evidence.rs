//! A drill's evidence in a repository: create-only objects under `drills/`, each report
//! recorded in the audit log with its SHA-256, and read back checked against it.

use sha2::{Digest, Sha256};

use super::{html, DrillReport};

/// Where a drill's evidence lives in a repository.
pub fn evidence_key(id: &str, ext: &str) -> String {
    format!("drills/{id}.{ext}")
}

/// Stores a drill's evidence in a repository, create-only (`drills/ID.json` and
/// `drills/ID.html`), and records it in the audit log with the SHA-256 of the JSON.
/// Returns the audit entry's key.
pub async fn store(repo: &crate::repo::Repository, r: &DrillReport) -> crate::Result<String> {
    let json = serde_json::to_vec_pretty(r).map_err(|e| crate::Error::Task(e.to_string()))?;
    repo.store()
        .put_new(
            &evidence_key(&r.id, "html"),
            bytes::Bytes::from(html::render(r).into_bytes()),
        )
        .await?;
    crate::recovery::audit::put_recorded(
        repo,
        &evidence_key(&r.id, "json"),
        json,
        "drill",
        None,
        serde_json::json!({
            "id": r.id,
            "scenario": r.scenario,
            "verdict": r.verdict,
            "report": evidence_key(&r.id, "json"),
            "rto_s": r.measured.rto_s,
            "lost": r.measured.lost,
        }),
    )
    .await
}

/// The drills whose evidence a repository holds, oldest first; each checked against the
/// SHA-256 its audit entry recorded (a report that no longer matches is an error naming
/// it).
pub async fn stored(repo: &crate::repo::Repository) -> crate::Result<Vec<DrillReport>> {
    let audited: std::collections::HashMap<String, String> = crate::recovery::audit::list(repo)
        .await?
        .into_iter()
        .filter(|(_, e)| e.action == "drill")
        .filter_map(|(_, e)| {
            let key = e.details["report"].as_str()?.to_string();
            Some((key, e.plan_sha256))
        })
        .collect();
    let mut objects = repo.store().list("drills/").await?;
    objects.sort_by(|a, b| a.key.cmp(&b.key));
    let mut out = Vec::new();
    for o in objects.iter().filter(|o| o.key.ends_with(".json")) {
        let raw = repo.store().get(&o.key).await?;
        match audited.get(&o.key) {
            Some(sha) if *sha == hex::encode(Sha256::digest(&raw)) => {}
            Some(_) => {
                return Err(crate::Error::Damaged(format!(
                    "{}: the drill report differs from the one its audit entry recorded",
                    o.key
                )))
            }
            None => {
                return Err(crate::Error::Damaged(format!(
                    "{}: a drill report without an audit entry",
                    o.key
                )))
            }
        }
        let r: DrillReport = serde_json::from_slice(&raw)
            .map_err(|e| crate::Error::Damaged(format!("{}: not a drill report: {e}", o.key)))?;
        out.push(r);
    }
    out.sort_by(|a, b| a.started_at.cmp(&b.started_at));
    Ok(out)
}
