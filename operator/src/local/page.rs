//! The local fabric's join page (`GET /`): pick a meeting, a region and a name; the page asks
//! the join API for a token and opens the chosen node's web client with it. The page holds the
//! fabric's API key: the local fabric is for one machine (in a cluster your backend calls the
//! join API, never a browser).

use crate::crd::Meeting;
use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use kube::ResourceExt;
use kube::runtime::reflector::Store;
use std::sync::Arc;

/// What the page's handlers read.
pub(super) struct PageState {
    pub(super) api_key: String,
    pub(super) meetings: Store<Meeting>,
    pub(super) regions: Vec<String>,
}

/// `GET /local/meetings`: the applied meetings, with where they run.
pub(super) async fn list_meetings(State(s): State<Arc<PageState>>) -> Response {
    let mut list: Vec<serde_json::Value> = s
        .meetings
        .state()
        .iter()
        .map(|m| {
            let st = m.status.clone().unwrap_or_default();
            serde_json::json!({
                "namespace": m.namespace().unwrap_or_default(),
                "name": m.name_any(),
                "title": m.spec.title,
                "regions": m.spec.participants.per_region().keys().collect::<Vec<_>>(),
                "nodes": st.nodes.iter().map(|n| format!("{} ({})", n.node, n.region)).collect::<Vec<_>>(),
                "participants": st.participants.unwrap_or(0),
            })
        })
        .collect();
    list.sort_by_key(|v| v["name"].as_str().unwrap_or_default().to_owned());
    axum::Json(serde_json::json!({"regions": s.regions, "meetings": list})).into_response()
}

/// `GET /`: pick a meeting, a region and a name; the page asks the join API for a token and
/// opens the chosen node's web client with it. The page holds the fabric's API key: the local
/// fabric is for one machine (in a cluster your backend calls the join API, never a browser).
pub(super) async fn join_page(State(s): State<Arc<PageState>>) -> Html<String> {
    Html(JOIN_PAGE.replace(
        "__API_KEY__",
        &serde_json::to_string(&s.api_key).unwrap_or_default(),
    ))
}

const JOIN_PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>moim — local fabric</title>
<style>
body { font: 15px system-ui, sans-serif; max-width: 44rem; margin: 2rem auto; padding: 0 1rem; }
table { border-collapse: collapse; width: 100%; } td, th { text-align: left; padding: .3rem .5rem; border-bottom: 1px solid #ddd; }
form { margin: 1rem 0; display: flex; gap: .5rem; flex-wrap: wrap; } #error { color: #b00; }
</style></head><body>
<h1>moim (모임) — local fabric</h1>
<p>Meetings from the folder, placed on media nodes in each region. Join one: you are sent to
the node of the region you pick, and the nodes relay each stream between regions over QUIC.</p>
<table id="meetings"><thead><tr><th>meeting</th><th>title</th><th>runs on</th><th>people</th></tr></thead><tbody></tbody></table>
<form id="join">
  <select id="meeting" aria-label="meeting"></select>
  <select id="region" aria-label="region"></select>
  <input id="name" placeholder="your name" required>
  <button>Join</button>
</form>
<p id="error"></p>
<script>
const API_KEY = __API_KEY__;
const $ = (id) => document.getElementById(id);
async function refresh() {
  const r = await (await fetch('/local/meetings')).json();
  const body = $('meetings').tBodies[0];
  body.replaceChildren(...r.meetings.map((m) => {
    const tr = document.createElement('tr');
    for (const v of [`${m.namespace}/${m.name}`, m.title, m.nodes.join(', ') || 'not placed', m.participants]) {
      const td = document.createElement('td'); td.textContent = v; tr.append(td);
    }
    return tr;
  }));
  if (!$('meeting').options.length) {
    for (const m of r.meetings) $('meeting').add(new Option(`${m.namespace}/${m.name}`, JSON.stringify([m.namespace, m.name])));
    for (const g of r.regions) $('region').add(new Option(g, g));
  }
}
$('join').onsubmit = async (e) => {
  e.preventDefault();
  const [namespace, meeting] = JSON.parse($('meeting').value);
  const name = $('name').value;
  const identity = name.toLowerCase().replace(/[^a-z0-9]+/g, '-') + '-' + Math.random().toString(36).slice(2, 7);
  const r = await fetch('/v1/join', {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${API_KEY}` },
    body: JSON.stringify({ namespace, meeting, identity, name, region: $('region').value }),
  });
  const j = await r.json();
  if (!r.ok) { $('error').textContent = j.message; return; }
  const ice = j.iceServers ? `&ice=${encodeURIComponent(JSON.stringify(j.iceServers))}` : '';
  location.href = `${j.url}/?room=${encodeURIComponent(j.room)}&name=${encodeURIComponent(name)}&token=${encodeURIComponent(j.token)}&autojoin=1${ice}`;
};
refresh(); setInterval(refresh, 2000);
</script></body></html>
"#;
