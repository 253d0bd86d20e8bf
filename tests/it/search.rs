//! `GET /teams/{teamId}/search`: ranking basics (title above description, more occurrences above
//! fewer, prefixes, every word required), snippets (the fragments are an excerpt of the field,
//! the matching ones are the matched words, no markup), one team only, members only, `q` and
//! `limit` validation, the index kept in step with writes, and agreement with the list's `q`.

use std::collections::{BTreeSet, HashSet};

use crate::common::*;
use crate::task_filters::{
    SEPARATORS, VOCAB, assert_names_param, query_words, random_text, text_matches, words,
};
use serde_json::{Value, json};
use uuid::Uuid;

both_backends!(
    search_ranking_basics,
    search_ranks_the_newest_500_matches,
    search_snippets,
    search_scope_and_validation,
    search_follows_writes,
    search_agrees_with_the_model_and_the_list_filter,
);

fn search_path(team: Uuid) -> String {
    format!("/api/v1/teams/{team}/search")
}

/// `GET /search?q=` (and `extra` parameters): the items, each checked for shape, scores
/// non-increasing, each snippet checked against its task and the query.
async fn search(api: &Api, tok: &str, team: Uuid, q: &str, extra: &str) -> Vec<Value> {
    let url = format!("{}?q={}{extra}", search_path(team), urlencode(q));
    let r = api.get(&url, tok).await;
    let items = r.ok(200)["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{url}: no items: {}", r.text))
        .clone();
    let mut last = f64::INFINITY;
    for it in &items {
        let score = it["score"]
            .as_f64()
            .unwrap_or_else(|| panic!("{url}: score is not a number: {it}"));
        assert!(score <= last, "{url}: scores must not increase: {}", r.text);
        last = score;
        assert_eq!(it["task"]["teamId"], json!(team), "{url}: {it}");
        check_snippet(it, q);
    }
    items
}

fn ids(items: &[Value]) -> Vec<Uuid> {
    items
        .iter()
        .map(|i| i["task"]["id"].as_str().unwrap().parse().unwrap())
        .collect()
}

fn score_of(items: &[Value], id: Uuid) -> f64 {
    items
        .iter()
        .find(|i| i["task"]["id"] == json!(id))
        .unwrap_or_else(|| panic!("{id} not found in {items:?}"))["score"]
        .as_f64()
        .unwrap()
}

/// The snippet's rules: a field of the task; the fragments concatenated are an excerpt of it
/// (`…` where cut); the fragments marked as matching are whole words that begin with a query
/// word, and no other fragment holds such a word. Returns (field, excerpt, matched words).
fn check_snippet(item: &Value, q: &str) -> (String, String, Vec<String>) {
    let s = &item["snippet"];
    let field = s["field"]
        .as_str()
        .unwrap_or_else(|| panic!("snippet without field: {item}"));
    assert!(
        field == "title" || field == "description",
        "snippet field {field}: {item}"
    );
    let text = item["task"][field].as_str().unwrap_or_default();
    let frags = s["fragments"]
        .as_array()
        .unwrap_or_else(|| panic!("snippet without fragments: {item}"));
    assert!(!frags.is_empty(), "no fragments: {item}");
    let qw = query_words(q);
    let begins_query_word = |w: &str| qw.iter().any(|q| w.starts_with(q.as_str()));
    let mut excerpt = String::new();
    let mut matched = Vec::new();
    for f in frags {
        let t = f["text"]
            .as_str()
            .unwrap_or_else(|| panic!("fragment text: {item}"));
        let m = f["match"]
            .as_bool()
            .unwrap_or_else(|| panic!("fragment match: {item}"));
        excerpt.push_str(t);
        if m {
            let w = words(t);
            assert!(
                w.len() == 1 && t.chars().all(char::is_alphanumeric),
                "a matching fragment is one whole word, not {t:?}: {item}"
            );
            assert!(
                begins_query_word(&w[0]),
                "matching fragment {t:?} begins no word of {q:?}: {item}"
            );
            matched.push(t.to_owned());
        } else {
            for w in words(t) {
                assert!(
                    !begins_query_word(&w),
                    "{w:?} matches {q:?} but its fragment is not marked: {item}"
                );
            }
        }
    }
    assert!(!matched.is_empty(), "no matching fragment: {item}");
    // An excerpt: the pieces between cuts are in the field's text, in order.
    let mut at = 0;
    for piece in excerpt.split('…').filter(|p| !p.is_empty()) {
        let found = text[at..].find(piece).unwrap_or_else(|| {
            panic!("snippet piece {piece:?} is not in the {field} {text:?}: {item}")
        });
        at += found + piece.len();
    }
    if !excerpt.contains('…') {
        assert_eq!(
            excerpt, text,
            "an uncut snippet is the whole {field}: {item}"
        );
    }
    assert!(
        words(&excerpt).len() <= 35,
        "an excerpt is about 30 words at most: {excerpt:?}"
    );
    (field.to_owned(), excerpt, matched)
}

async fn search_ranking_basics(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let tok = owner.token();
    let team = api.create_team(tok, "Rank").await;
    let mk = |title: &'static str, description: &'static str| {
        let api = api.clone();
        let tok = tok.to_string();
        async move {
            api.create_task(
                &tok,
                team.id,
                json!({"title": title, "description": description}),
            )
            .await
            .id
        }
    };
    // Description-only first, so that creation order cannot explain the ranking.
    let in_desc = mk("weekly report", "kiwi was named once here").await;
    let in_title = mk("kiwi report", "nothing else was said here").await;
    let few = mk("notes one", "mango plum pear quince").await;
    let many = mk("notes two", "mango mango mango quince").await;
    let title_few = mk("fig pear plum", "").await;
    let title_many = mk("fig fig fig", "").await;
    let desc_fig = mk("other words", "fig pear plum").await;
    let _unrelated = mk("deploy failed", "the cache was cold").await;

    let got = search(&api, tok, team.id, "kiwi", "").await;
    assert_eq!(
        ids(&got),
        [in_title, in_desc],
        "a title match ranks above a description match"
    );
    assert!(score_of(&got, in_title) > score_of(&got, in_desc));

    let got = search(&api, tok, team.id, "mango", "").await;
    assert_eq!(ids(&got), [many, few], "more occurrences rank above fewer");
    assert!(score_of(&got, many) > score_of(&got, few));

    let got = search(&api, tok, team.id, "fig", "").await;
    assert_eq!(
        ids(&got),
        [title_many, title_few, desc_fig],
        "title x3, title x1, description x1"
    );

    // Prefixes, case-insensitively.
    for q in ["kiw", "KIW", "Kiwi"] {
        let got = search(&api, tok, team.id, q, "").await;
        assert_eq!(ids(&got), [in_title, in_desc], "prefix {q}");
    }
    let got = search(&api, tok, team.id, "dep fai", "").await;
    assert_eq!(got.len(), 1, "q=dep fai finds \"deploy failed\"");
    // Every word must match.
    let got = search(&api, tok, team.id, "kiwi weekly", "").await;
    assert_eq!(ids(&got), [in_desc], "both words, one in each field");
    assert!(
        search(&api, tok, team.id, "kiwi zzz", "").await.is_empty(),
        "a word that matches nothing leaves nothing"
    );
    // A word is a prefix of a word, not a substring of one.
    assert!(search(&api, tok, team.id, "iwi", "").await.is_empty());
    assert!(search(&api, tok, team.id, "ango", "").await.is_empty());
}

/// The ranking looks at the team's 500 newest matches (docs/contract-extensions.md): the best
/// match, created first, is ranked while it is among them and not once 500 newer tasks match.
async fn search_ranks_the_newest_500_matches(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let tok = owner.token();
    let team = api.create_team(tok, "Newest").await;
    let best = api
        .create_task(tok, team.id, json!({"title": "durian durian durian"}))
        .await
        .id;
    let mut weak = Vec::new();
    for chunk in 0..25 {
        let made = futures_util::future::join_all((0..20).map(|i| {
            api.create_task(
                tok,
                team.id,
                json!({"title": format!("weak {chunk} {i}"), "description": "a durian, once"}),
            )
        }))
        .await;
        weak.extend(made.into_iter().map(|t| t.id));
    }
    // 501 matches: the best one is the oldest, outside the 500 ranked.
    let got = search(&api, tok, team.id, "durian", "&limit=50").await;
    assert_eq!(got.len(), 50);
    assert!(
        !ids(&got).contains(&best),
        "the 501st newest match is not ranked"
    );
    // The list's `q` still finds it (every match, in id order).
    let list = api
        .get(
            &format!("/api/v1/teams/{}/tasks?q=durian&limit=1", team.id),
            tok,
        )
        .await;
    assert_eq!(list.ok(200)["items"][0]["id"], json!(best));
    // One newer match fewer (any of them): the best is among the 500 newest, and first.
    api.delete(&format!("/api/v1/tasks/{}", weak[0]), tok)
        .await
        .ok(204);
    let got = search(&api, tok, team.id, "durian", "&limit=5").await;
    assert_eq!(
        ids(&got)[0],
        best,
        "the best match of the 500 newest ranks first"
    );
}

async fn search_snippets(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let tok = owner.token();
    let team = api.create_team(tok, "Snippets").await;

    // Markup in the text comes back as text: the fragments concatenated are the title.
    let title = "Deploy failed on <b>prod</b> & <script>x()</script>";
    let t = api
        .create_task(tok, team.id, json!({"title": title, "description": "ops"}))
        .await;
    let got = search(&api, tok, team.id, "dep fai", "").await;
    assert_eq!(ids(&got), [t.id]);
    let (field, excerpt, matched) = check_snippet(&got[0], "dep fai");
    assert_eq!(field, "title");
    assert_eq!(excerpt, title);
    assert_eq!(matched, ["Deploy", "failed"]);
    let got = search(&api, tok, team.id, "prod", "").await;
    let (_, excerpt, matched) = check_snippet(&got[0], "prod");
    assert_eq!(excerpt, title);
    assert_eq!(matched, ["prod"]);

    // A description-only match shows the description.
    let desc = "The login page, and the logout page: both broken.";
    let t2 = api
        .create_task(tok, team.id, json!({"title": "Auth", "description": desc}))
        .await;
    let got = search(&api, tok, team.id, "log", "").await;
    assert_eq!(ids(&got), [t2.id]);
    let (field, excerpt, matched) = check_snippet(&got[0], "log");
    assert_eq!(field, "description");
    assert_eq!(excerpt, desc);
    assert_eq!(matched, ["login", "logout"]);

    // Every occurrence is marked, whatever its case.
    let t3 = api
        .create_task(tok, team.id, json!({"title": "plum and Plum and PLUM"}))
        .await;
    let got = search(&api, tok, team.id, "plum", "").await;
    assert_eq!(ids(&got), [t3.id]);
    assert_eq!(check_snippet(&got[0], "plum").2, ["plum", "Plum", "PLUM"]);

    // Unicode words, either case.
    let t4 = api
        .create_task(tok, team.id, json!({"title": "Café crème brûlée"}))
        .await;
    for (q, want) in [("brû", "brûlée"), ("CAFÉ", "Café"), ("crè", "crème")] {
        let got = search(&api, tok, team.id, q, "").await;
        assert_eq!(ids(&got), [t4.id], "q={q}");
        assert_eq!(check_snippet(&got[0], q).2, [want], "q={q}");
    }

    // A long description matched in its middle: an excerpt of about 30 words, cut on both
    // sides, around the match.
    let filler: Vec<String> = (0..120).map(|i| format!("word{i}")).collect();
    let mut long = filler[..60].join(" ");
    long.push_str(" needle ");
    long.push_str(&filler[60..].join(" "));
    let t5 = api
        .create_task(tok, team.id, json!({"title": "Long", "description": long}))
        .await;
    let got = search(&api, tok, team.id, "needle", "").await;
    assert_eq!(ids(&got), [t5.id]);
    let (field, excerpt, matched) = check_snippet(&got[0], "needle");
    assert_eq!(field, "description");
    assert_eq!(matched, ["needle"]);
    assert!(
        excerpt.starts_with('…') && excerpt.ends_with('…'),
        "cut on both sides: {excerpt:?}"
    );
    let n = words(&excerpt).len();
    assert!((10..=35).contains(&n), "{n} words: {excerpt:?}");
}

async fn search_scope_and_validation(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let tok = owner.token();
    let team = api.create_team(tok, "Mine").await;
    let viewer = api.member(tok, team.id, "V", "viewer").await;
    let rival = api.new_user("Rival").await;
    let theirs = api.create_team(rival.token(), "Theirs").await;
    let mut mine = HashSet::new();
    let mut their = HashSet::new();
    for i in 0..25 {
        let body = json!({"title": format!("plum {i}"), "description": "shared words"});
        mine.insert(api.create_task(tok, team.id, body.clone()).await.id);
        if i < 5 {
            their.insert(api.create_task(rival.token(), theirs.id, body).await.id);
        }
    }
    let t = api.task(tok, team.id, "commented").await;
    api.comment(tok, t.id, "quince in a comment only").await;

    // One team only, whoever asks; the default limit is 20, at most 50.
    let got = search(&api, viewer.token(), team.id, "plum", "").await;
    assert_eq!(got.len(), 20, "default limit");
    assert!(ids(&got).iter().all(|id| mine.contains(id)));
    let got = search(&api, tok, team.id, "plum", "&limit=50").await;
    assert_eq!(ids(&got).into_iter().collect::<HashSet<_>>(), mine);
    let got = search(&api, tok, team.id, "shared", "&limit=1").await;
    assert_eq!(got.len(), 1);
    let got = search(&api, rival.token(), theirs.id, "plum", "&limit=50").await;
    assert_eq!(ids(&got).into_iter().collect::<HashSet<_>>(), their);
    // Comments are not searched.
    assert!(search(&api, tok, team.id, "quince", "").await.is_empty());

    // Members only: 404 for anyone else and for an unknown team.
    api.get(&format!("{}?q=plum", search_path(team.id)), rival.token())
        .await
        .problem(404, "not_found");
    api.get(&format!("{}?q=plum", search_path(Uuid::new_v4())), tok)
        .await
        .problem(404, "not_found");
    api.get("/api/v1/teams/nope/search?q=plum", tok)
        .await
        .problem(400, "bad_request");

    let path = search_path(team.id);
    for (query, name) in [
        (String::new(), "q"),
        ("q=".to_owned(), "q"),
        (format!("q={}", "a".repeat(201)), "q"),
        ("q=plum&limit=0".to_owned(), "limit"),
        ("q=plum&limit=51".to_owned(), "limit"),
        ("q=plum&limit=-1".to_owned(), "limit"),
        ("q=plum&limit=x".to_owned(), "limit"),
    ] {
        let r = api.get(&format!("{path}?{query}"), tok).await;
        assert_names_param(&r, name);
    }
    // 200 characters is fine; a q without any word finds nothing or is refused, naming q.
    api.get(&format!("{path}?q={}", "a".repeat(200)), tok)
        .await
        .ok(200);
    let r = api
        .get(&format!("{path}?q={}", urlencode("!!! ...")), tok)
        .await;
    if r.status == 200 {
        assert_eq!(r.json["items"], json!([]), "{}", r.text);
    } else {
        assert_names_param(&r, "q");
    }
}

async fn search_follows_writes(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let tok = owner.token();
    let team = api.create_team(tok, "Writes").await;
    let t = api
        .create_task(
            tok,
            team.id,
            json!({"title": "apricot", "description": "banana"}),
        )
        .await;
    assert_eq!(ids(&search(&api, tok, team.id, "apri", "").await), [t.id]);
    assert_eq!(ids(&search(&api, tok, team.id, "bana", "").await), [t.id]);
    api.patch_task(tok, t.id, json!({"title": "cherry"}))
        .await
        .ok(200);
    assert!(search(&api, tok, team.id, "apricot", "").await.is_empty());
    let got = search(&api, tok, team.id, "cherry", "").await;
    assert_eq!(ids(&got), [t.id]);
    assert_eq!(got[0]["task"]["title"], "cherry", "the task as it is now");
    assert_eq!(got[0]["task"]["version"], 2);
    api.patch_task(tok, t.id, json!({"description": "damson"}))
        .await
        .ok(200);
    assert!(search(&api, tok, team.id, "banana", "").await.is_empty());
    assert_eq!(ids(&search(&api, tok, team.id, "dams", "").await), [t.id]);
    // Edits of other fields leave the words found, and (SQLite) the index untouched: an edit
    // that keeps the words does not index them again.
    let index_before = sqlite_search_index(&srv).await;
    api.patch_task(tok, t.id, json!({"status": "done", "priority": "high"}))
        .await
        .ok(200);
    assert_eq!(
        sqlite_search_index(&srv).await,
        index_before,
        "an edit of the status and priority rewrote the search index"
    );
    assert_eq!(
        ids(&search(&api, tok, team.id, "cherry damson", "").await),
        [t.id]
    );
    api.delete(&format!("/api/v1/tasks/{}", t.id), tok)
        .await
        .ok(204);
    assert!(search(&api, tok, team.id, "cherry", "").await.is_empty());
    assert!(search(&api, tok, team.id, "damson", "").await.is_empty());
}

/// SQLite: the search index's stored blocks (FTS5's `_data` table), which any write to the
/// index changes; PostgreSQL: nothing (its index follows the row).
async fn sqlite_search_index(srv: &TestServer) -> Option<Vec<(i64, Vec<u8>)>> {
    use sqlx::Connection;
    let path = srv.db_url.strip_prefix("sqlite://")?;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{path}?mode=ro"))
        .await
        .expect("opens the database read-only");
    let blocks = sqlx::query_as("SELECT id, block FROM task_words_data ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .expect("reads the index's blocks");
    conn.close().await.ok();
    Some(blocks)
}

/// Random texts of a small vocabulary: the search finds exactly the tasks the contract's rule
/// matches (fewer than the limit exist), and so does the list's `q`, in id order.
async fn search_agrees_with_the_model_and_the_list_filter(b: Backend) {
    let seed = Rng::seed_from_env();
    eprintln!("search ({b:?}) seed = {seed} (set TASKFORGE_TEST_SEED={seed} to replay)");
    let mut rng = Rng::new(seed);
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let tok = owner.token();
    let team = api.create_team(tok, "Model").await;
    let mut model: Vec<Value> = Vec::new();
    for _ in 0..45 {
        let mut body = json!({"title": random_text(&mut rng, 1, 3)});
        if rng.chance(70) {
            body["description"] = json!(random_text(&mut rng, 1, 8));
        }
        model.push(
            api.post(&format!("/api/v1/teams/{}/tasks", team.id), tok, body)
                .await
                .ok(201)
                .clone(),
        );
    }
    let mut nonempty = 0;
    for i in 0..40 {
        let n = 1 + rng.below(2);
        let mut q = String::new();
        for k in 0..n {
            if k > 0 {
                let piece: &str = rng.pick::<&str>(SEPARATORS);
                q.push_str(piece);
            }
            let w: Vec<char> = (*rng.pick(VOCAB)).chars().collect();
            let len = if rng.chance(50) {
                w.len()
            } else {
                1 + rng.below(w.len())
            };
            let w: String = w[..len].iter().collect();
            q.push_str(&if rng.chance(30) { w.to_uppercase() } else { w });
        }
        let want: BTreeSet<Uuid> = model
            .iter()
            .filter(|t| text_matches(t, &q))
            .map(|t| t["id"].as_str().unwrap().parse().unwrap())
            .collect();
        let got = search(&api, tok, team.id, &q, "&limit=50").await;
        let got_set: BTreeSet<Uuid> = ids(&got).into_iter().collect();
        assert_eq!(
            got.len(),
            got_set.len(),
            "seed {seed}, q={q:?}: a task twice"
        );
        assert_eq!(got_set, want, "seed {seed}, query {i}: q={q:?}");
        let listed: Vec<Uuid> = api
            .all_pages(
                tok,
                &format!(
                    "/api/v1/teams/{}/tasks?limit=200&q={}",
                    team.id,
                    urlencode(&q)
                ),
            )
            .await
            .iter()
            .map(|t| t["id"].as_str().unwrap().parse().unwrap())
            .collect();
        assert_eq!(
            listed,
            want.iter().copied().collect::<Vec<_>>(),
            "seed {seed}: the list's q={q:?} (id order)"
        );
        if !want.is_empty() {
            nonempty += 1;
        }
    }
    assert!(
        nonempty >= 10,
        "seed {seed}: only {nonempty} queries found anything"
    );
}
