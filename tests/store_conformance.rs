//! One conformance suite for every `Store` implementation: each check below
//! runs against the embedded store (in memory and on a file) and against
//! `RedisStore` talking to a real `redis-server` that the test starts itself.
//! A test is named `<backend>::<check>`, so a failure names both.
//!
//! The Redis tests need `redis-server` on PATH and fail (never skip) without it. The whole suite
//! also runs against a real Redis Cluster (`redis_cluster_passes_every_check`).

mod support;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use futures::future::join_all;
use openclaw_gateway::store::{
    AppendOutcome, CapBreach, CreateOutcome, EmbeddedStore, History, HistoryBudget, KeyLimits,
    KeyRecord, LockOutcome, RecordedResult, RedisConfig, RedisStore, RedisTopology, SessionCap,
    SessionCaps, SessionRecord, Store, StoredMessage, SummaryOf, TurnFence,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------- fixtures

fn uid(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4())
}

/// A fixed instant with sub-millisecond digits, plus `secs` seconds.
fn at(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 14, 15, 9, 26).unwrap()
        + chrono::Duration::nanoseconds(535_897_932)
        + chrono::Duration::seconds(secs)
}

fn key(created_at: DateTime<Utc>) -> KeyRecord {
    let hash = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    KeyRecord {
        id: uid("key"),
        name: "test key".into(),
        prefix: format!("oc_{}", &hash[..8]),
        secret_hash: hash,
        scopes: vec!["chat".into(), "sessions".into()],
        limits: KeyLimits::default(),
        quotas: Default::default(),
        budget: None,
        created_at,
        last_used_at: None,
        revoked_at: None,
    }
}

fn session(owner: &str, id: &str, created_at: DateTime<Utc>) -> SessionRecord {
    SessionRecord {
        owner: owner.into(),
        id: id.into(),
        model: "test-model".into(),
        status: "active".into(),
        created_at,
        updated_at: created_at,
        temperature: Some(0.5),
        max_tokens: Some(256),
        message_count: 0,
        incarnation: FIRST_LIFE.into(),
        idle_ttl_seconds: 0,
        expires_at: None,
        context_strategy: Default::default(),
        summary_at: None,
        sampling: None,
    }
}

/// The incarnation of every session `session` makes.
const FIRST_LIFE: &str = "first-life";

/// The fence of a turn that `token` began on a session made by `session`.
fn fence(token: &str) -> TurnFence<'_> {
    TurnFence {
        token,
        incarnation: FIRST_LIFE,
    }
}

/// `session` as a read returns it: with the real message count.
fn counted(session: &SessionRecord, count: u32) -> SessionRecord {
    SessionRecord {
        message_count: count,
        ..session.clone()
    }
}

fn msg(role: &str, content: &str, created_at: DateTime<Utc>) -> StoredMessage {
    StoredMessage {
        role: role.into(),
        content: content.into(),
        created_at,
        summary: None,
        tool_calls: Vec::new(),
        tool_call_id: None,
        name: None,
        parts: Vec::new(),
        // Kept with the message and read back as written, like every other field.
        tokens: Some(content.len() as u32),
    }
}

/// A user message and its reply, both tagged with `n`.
fn turn(n: usize, created_at: DateTime<Utc>) -> Vec<StoredMessage> {
    vec![
        msg("user", &format!("question {n}"), created_at),
        msg("assistant", &format!("answer {n}"), created_at),
    ]
}

const LEASE: Duration = Duration::from_secs(30);

async fn all_messages(store: &dyn Store, owner: &str, id: &str) -> Vec<StoredMessage> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let page = store
            .list_messages(owner, id, offset, 50)
            .await
            .expect("list_messages");
        out.extend(page.items);
        match page.next {
            Some(next) => {
                assert!(next > offset, "paging must advance");
                offset = next;
            }
            None => return out,
        }
    }
}

async fn all_sessions(store: &dyn Store, owner: &str) -> Vec<SessionRecord> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let page = store
            .list_sessions(owner, offset, 50)
            .await
            .expect("list_sessions");
        out.extend(page.items);
        match page.next {
            Some(next) => {
                assert!(next > offset, "paging must advance");
                offset = next;
            }
            None => return out,
        }
    }
}

fn ids(sessions: &[SessionRecord]) -> Vec<String> {
    sessions.iter().map(|s| s.id.clone()).collect()
}

fn contents(messages: &[StoredMessage]) -> Vec<String> {
    messages.iter().map(|m| m.content.clone()).collect()
}

async fn acquire(
    store: &dyn Store,
    owner: &str,
    id: &str,
    token: &str,
    lease: Duration,
) -> (SessionRecord, Vec<StoredMessage>) {
    match store
        .lock_session(owner, id, token, lease, &HistoryBudget::unbounded())
        .await
        .expect("lock_session")
    {
        LockOutcome::Acquired { session, history } => {
            assert!(history.complete, "an unbounded read reads everything");
            if history.summary.is_none() {
                assert_eq!(history.len, history.messages().len() as u64);
            }
            (session, history.messages())
        }
        other => panic!("expected to acquire the lock of {owner}/{id}, got {other:?}"),
    }
}

async fn lock_outcome(store: &dyn Store, owner: &str, id: &str, token: &str) -> LockOutcome {
    store
        .lock_session(owner, id, token, LEASE, &HistoryBudget::unbounded())
        .await
        .expect("lock_session")
}

/// A turn's read under `budget`: what of the history it returned.
async fn acquire_within(
    store: &dyn Store,
    owner: &str,
    id: &str,
    token: &str,
    budget: &HistoryBudget,
) -> History {
    match store
        .lock_session(owner, id, token, LEASE, budget)
        .await
        .expect("lock_session")
    {
        LockOutcome::Acquired { history, .. } => history,
        other => panic!("expected to acquire the lock of {owner}/{id}, got {other:?}"),
    }
}

/// A budget for the model "test-model" of `window` tokens, the turn itself taking `fixed`
/// and the completion the session's maxTokens (256, see `session`).
fn budget(window: u32, fixed: u32) -> HistoryBudget {
    HistoryBudget {
        windows: std::sync::Arc::new(vec![
            ("other-model".into(), 1),
            ("test-model".into(), window),
        ]),
        default_window: 1,
        fixed,
        max_tokens: None,
        default_max_tokens: 100_000,
    }
}

/// Everything a reader can see of one owner's session (and the owner's listing).
#[derive(Debug, PartialEq)]
struct Snapshot {
    session: Option<SessionRecord>,
    history: Vec<StoredMessage>,
    listing: Vec<SessionRecord>,
}

async fn snapshot(store: &dyn Store, owner: &str, id: &str) -> Snapshot {
    Snapshot {
        session: store.get_session(owner, id).await.expect("get_session"),
        history: all_messages(store, owner, id).await,
        listing: all_sessions(store, owner).await,
    }
}

// ---------------------------------------------------------------- checks

/// The backend answers a ping and names itself.
async fn check_ping_and_name(store: &dyn Store) {
    store.ping().await.expect("ping");
    assert!(
        ["embedded-store", "redis"].contains(&store.name()),
        "unexpected backend name {:?}",
        store.name()
    );
}

/// Keys: insert, get by id and by hash, list oldest first, update (revoke,
/// limits, name, last use), and an update of an unknown id is refused.
async fn check_keys(store: &dyn Store) {
    let (k1, k2, k3) = (key(at(0)), key(at(1)), key(at(2)));
    for k in [&k2, &k3, &k1] {
        store.insert_key(k).await.expect("insert_key");
    }

    assert_eq!(store.key_by_id(&k1.id).await.unwrap(), Some(k1.clone()));
    assert_eq!(store.key_by_id(&k3.id).await.unwrap(), Some(k3.clone()));
    assert_eq!(
        store.key_by_hash(&k2.secret_hash).await.unwrap(),
        Some(k2.clone())
    );
    assert_eq!(store.key_by_id(&uid("key")).await.unwrap(), None);
    assert_eq!(store.key_by_hash(&"0".repeat(64)).await.unwrap(), None);
    // An id is not a hash, nor the other way round.
    assert_eq!(store.key_by_hash(&k1.id).await.unwrap(), None);
    assert_eq!(store.key_by_id(&k1.secret_hash).await.unwrap(), None);

    let ours = |keys: Vec<KeyRecord>| -> Vec<KeyRecord> {
        keys.into_iter()
            .filter(|k| [&k1.id, &k2.id, &k3.id].contains(&&k.id))
            .collect()
    };
    assert_eq!(
        ours(store.list_keys().await.unwrap()),
        vec![k1.clone(), k2.clone(), k3.clone()],
        "list_keys is oldest first"
    );

    let mut updated = k2.clone();
    updated.name = "renamed ✓".into();
    updated.limits = KeyLimits {
        requests_per_minute: Some(60),
        tokens_per_minute: Some(10_000),
        context_tokens_per_minute: Some(5_000),
        concurrent_streams: Some(3),
        event_subscriptions: Some(2),
    };
    updated.last_used_at = Some(at(10));
    updated.revoked_at = Some(at(20));
    assert!(store.update_key(&updated).await.unwrap());
    assert_eq!(
        store.key_by_id(&k2.id).await.unwrap(),
        Some(updated.clone())
    );
    assert_eq!(
        store.key_by_hash(&k2.secret_hash).await.unwrap(),
        Some(updated.clone()),
        "the hash still finds the updated key"
    );
    assert!(store.key_by_id(&k2.id).await.unwrap().unwrap().is_revoked());
    assert_eq!(store.key_by_id(&k1.id).await.unwrap(), Some(k1.clone()));
    assert_eq!(
        ours(store.list_keys().await.unwrap()),
        vec![k1.clone(), updated.clone(), k3.clone()],
        "an update keeps the key's place and replaces its record"
    );

    let ghost = key(at(3));
    assert!(
        !store.update_key(&ghost).await.unwrap(),
        "update of an unknown id is false"
    );
    assert_eq!(store.key_by_id(&ghost.id).await.unwrap(), None);
    assert_eq!(store.key_by_hash(&ghost.secret_hash).await.unwrap(), None);
    assert!(
        !store
            .list_keys()
            .await
            .unwrap()
            .iter()
            .any(|k| k.id == ghost.id)
    );
}

/// A revoked key stays revoked when a later update (a stale copy) carries no
/// revocation; the rest of that update still applies.
async fn check_revocation_is_permanent(store: &dyn Store) {
    let original = key(at(0));
    store.insert_key(&original).await.unwrap();
    let mut revoked = original.clone();
    revoked.revoked_at = Some(at(5));
    assert!(store.update_key(&revoked).await.unwrap());

    let mut stale = original.clone();
    stale.last_used_at = Some(at(6));
    assert!(store.update_key(&stale).await.unwrap());
    let stored = store.key_by_id(&original.id).await.unwrap().unwrap();
    assert_eq!(stored.revoked_at, Some(at(5)), "revocation was undone");
    assert_eq!(stored.last_used_at, Some(at(6)));
}

/// Recording a key's last use changes that field only: touches racing an administrator's
/// update (which another replica may write between a touch's read and its write) never bring
/// back the limits or name the update replaced, and the last use never moves backwards.
async fn check_touch_never_undoes_an_update(store: &dyn Store) {
    let original = key(at(0));
    store.insert_key(&original).await.unwrap();
    for round in 0..20u64 {
        let mut lowered = original.clone();
        lowered.name = format!("lowered {round}");
        lowered.limits.requests_per_minute = Some(round + 1);
        let touches = join_all((0..40).map(|i| store.touch_key(&original.id, at(1 + i))));
        let (touched, updated) = futures::join!(touches, store.update_key(&lowered));
        assert!(updated.unwrap());
        for outcome in touched {
            outcome.unwrap();
        }
        let stored = store.key_by_id(&original.id).await.unwrap().unwrap();
        assert_eq!(
            (stored.name.as_str(), stored.limits.requests_per_minute),
            (lowered.name.as_str(), Some(round + 1)),
            "a touch undid the update of round {round}"
        );
    }
    store.touch_key(&original.id, at(100)).await.unwrap();
    store.touch_key(&original.id, at(50)).await.unwrap();
    let stored = store.key_by_id(&original.id).await.unwrap().unwrap();
    assert_eq!(
        stored.last_used_at,
        Some(at(100)),
        "the last use moved back"
    );
    assert_eq!(stored.limits.requests_per_minute, Some(20));
    // Touching an unknown key writes nothing.
    store.touch_key("no-such-key", at(1)).await.unwrap();
    assert_eq!(store.key_by_id("no-such-key").await.unwrap(), None);
}

/// Creating a session returns true; a second create of the same (owner, id)
/// returns false and leaves the first session and its history untouched.
async fn check_create_session_once(store: &dyn Store) {
    let (owner, id) = (uid("owner"), uid("session"));
    let original = session(&owner, &id, at(0));
    let history = turn(0, at(0));
    assert!(created(store, &original, &history).await);

    let mut impostor = session(&owner, &id, at(50));
    impostor.model = "other-model".into();
    impostor.status = "closed".into();
    impostor.temperature = None;
    assert!(!created(store, &impostor, &[msg("user", "intruder", at(50))]).await);

    assert_eq!(
        store.get_session(&owner, &id).await.unwrap(),
        Some(counted(&original, 2))
    );
    assert_eq!(all_messages(store, &owner, &id).await, history);
    assert_eq!(
        all_sessions(store, &owner).await,
        vec![counted(&original, 2)]
    );
}

/// The same session id under two owners is two separate sessions: reads,
/// locks, appends and deletes of one never touch the other.
async fn check_owners_are_separate(store: &dyn Store) {
    let (alice, bob, id) = (uid("alice"), uid("bob"), uid("session"));
    let mut a = session(&alice, &id, at(0));
    a.model = "model-a".into();
    let mut b = session(&bob, &id, at(1));
    b.model = "model-b".into();
    let a_history = vec![msg("user", "alice's secret", at(0))];
    let b_history = vec![msg("user", "bob's secret", at(1))];
    assert!(created(store, &a, &a_history).await);
    assert!(
        created(store, &b, &b_history).await,
        "another owner's session with the same id must not block creation"
    );

    assert_eq!(
        store.get_session(&alice, &id).await.unwrap(),
        Some(counted(&a, 1))
    );
    assert_eq!(
        store.get_session(&bob, &id).await.unwrap(),
        Some(counted(&b, 1))
    );
    assert_eq!(all_messages(store, &alice, &id).await, a_history);
    assert_eq!(all_messages(store, &bob, &id).await, b_history);
    assert_eq!(ids(&all_sessions(store, &alice).await), vec![id.clone()]);
    assert_eq!(all_sessions(store, &bob).await, vec![counted(&b, 1)]);

    // Alice's lock does not lock Bob's session.
    let (_, history) = acquire(store, &alice, &id, "alice-token", LEASE).await;
    assert_eq!(history, a_history);
    let (_, history) = acquire(store, &bob, &id, "bob-token", LEASE).await;
    assert_eq!(history, b_history);

    let reply = vec![msg("assistant", "for alice only", at(2))];
    assert_eq!(
        store
            .append_turn(
                &alice,
                &id,
                fence("alice-token"),
                &reply,
                at(2),
                SessionCaps::UNLIMITED
            )
            .await
            .unwrap(),
        AppendOutcome::Appended
    );
    assert_eq!(all_messages(store, &bob, &id).await, b_history);
    assert_eq!(
        store
            .get_session(&bob, &id)
            .await
            .unwrap()
            .unwrap()
            .message_count,
        1
    );
    store.unlock_session(&bob, &id, "bob-token").await.unwrap();

    assert!(store.delete_session(&alice, &id).await.unwrap());
    assert_eq!(
        store.get_session(&bob, &id).await.unwrap(),
        Some(counted(&b, 1))
    );
    assert_eq!(all_messages(store, &bob, &id).await, b_history);
}

/// Another owner sees nothing of a session: get is None, listings are empty,
/// lock finds no session, delete finds nothing (and deletes nothing), an append finds no
/// session (and writes nothing).
async fn check_other_owner_sees_nothing(store: &dyn Store) {
    let (owner, stranger, id) = (uid("owner"), uid("stranger"), uid("session"));
    let s = session(&owner, &id, at(0));
    let history = turn(1, at(0));
    assert!(created(store, &s, &history).await);
    let before = snapshot(store, &owner, &id).await;

    assert_eq!(store.get_session(&stranger, &id).await.unwrap(), None);
    let page = store.list_messages(&stranger, &id, 0, 10).await.unwrap();
    assert!(page.items.is_empty());
    assert_eq!(page.next, None);
    let page = store.list_sessions(&stranger, 0, 10).await.unwrap();
    assert!(page.items.is_empty());
    assert_eq!(page.next, None);
    assert_eq!(
        lock_outcome(store, &stranger, &id, "t").await,
        LockOutcome::NoSession
    );
    assert!(!store.delete_session(&stranger, &id).await.unwrap());
    assert_eq!(
        store
            .append_turn(
                &stranger,
                &id,
                fence("t"),
                &turn(2, at(1)),
                at(1),
                SessionCaps::UNLIMITED
            )
            .await
            .unwrap(),
        AppendOutcome::SessionGone,
        "the stranger has no such session"
    );

    assert_eq!(snapshot(store, &owner, &id).await, before);
}

/// Session ids holding characters a key layout might use as separators are
/// still distinct sessions, each with only its own history.
async fn check_ids_with_separator_characters(store: &dyn Store) {
    let owner = uid("owner");
    let base = uid("x");
    let tricky: Vec<String> = ["", "/y", "\0y", "\0", ":msgs", "}", "{z}", ":lock", "\u{1}"]
        .iter()
        .map(|suffix| format!("{base}{suffix}"))
        .collect();
    for (n, id) in tricky.iter().enumerate() {
        let s = session(&owner, id, at(n as i64));
        assert!(
            created(store, &s, &[msg("user", &format!("only {id:?}"), at(0))]).await,
            "create {id:?}"
        );
    }
    for id in &tricky {
        assert_eq!(
            contents(&all_messages(store, &owner, id).await),
            vec![format!("only {id:?}")],
            "history of {id:?}"
        );
    }
    let mut listed = ids(&all_sessions(store, &owner).await);
    listed.reverse();
    assert_eq!(listed, tricky);

    // Locking, appending to and deleting the plain id touches no other.
    acquire(store, &owner, &tricky[0], "t", LEASE).await;
    let neighbour = LockOutcome::Acquired {
        session: counted(&session(&owner, &tricky[1], at(1)), 1),
        history: History {
            head: Vec::new(),
            summary: None,
            tail: vec![(0, msg("user", &format!("only {:?}", tricky[1]), at(0)))],
            complete: true,
            len: 1,
        },
    };
    assert_eq!(
        lock_outcome(store, &owner, &tricky[1], "u").await,
        neighbour
    );
    assert_eq!(
        store
            .append_turn(
                &owner,
                &tricky[0],
                fence("t"),
                &turn(0, at(0)),
                at(0),
                SessionCaps::UNLIMITED
            )
            .await
            .unwrap(),
        AppendOutcome::Appended
    );
    assert!(store.delete_session(&owner, &tricky[0]).await.unwrap());
    for id in &tricky[1..] {
        assert_eq!(
            contents(&all_messages(store, &owner, id).await),
            vec![format!("only {id:?}")],
            "history of {id:?}"
        );
    }
    assert_eq!(all_sessions(store, &owner).await.len(), tricky.len() - 1);
}

/// list_sessions is newest first, pages with `next` offsets, and lists only
/// the owner's sessions.
async fn check_list_sessions(store: &dyn Store) {
    let (owner, other) = (uid("owner"), uid("other"));
    // s{n} was created at second n; insert them out of order, interleaved with
    // another owner's sessions from the same seconds.
    let mut by_age = Vec::new();
    for n in [3, 1, 4, 0, 2] {
        let s = session(&owner, &format!("s{n}-{}", uid("id")), at(n));
        assert!(created(store, &s, &turn(n as usize, at(n))).await);
        let o = session(&other, &uid("foreign"), at(n));
        assert!(created(store, &o, &[]).await);
        by_age.push((n, s));
    }
    by_age.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    let newest_first: Vec<SessionRecord> = by_age.iter().map(|(_, s)| counted(s, 2)).collect();
    let id = |n: usize| newest_first[n].id.clone();

    let page = store.list_sessions(&owner, 0, 2).await.unwrap();
    assert_eq!(page.items, newest_first[0..2].to_vec());
    assert_eq!(page.next, Some(2));
    let page = store.list_sessions(&owner, 2, 2).await.unwrap();
    assert_eq!(ids(&page.items), vec![id(2), id(3)]);
    assert_eq!(page.next, Some(4));
    let page = store.list_sessions(&owner, 4, 2).await.unwrap();
    assert_eq!(ids(&page.items), vec![id(4)]);
    assert_eq!(page.next, None);

    let page = store.list_sessions(&owner, 1, 3).await.unwrap();
    assert_eq!(ids(&page.items), vec![id(1), id(2), id(3)]);
    assert_eq!(page.next, Some(4));

    for limit in [5, 6, 100] {
        let page = store.list_sessions(&owner, 0, limit).await.unwrap();
        assert_eq!(page.items, newest_first, "limit {limit}");
        assert_eq!(page.next, None, "limit {limit}");
    }
    for offset in [5, 6, 1000] {
        let page = store.list_sessions(&owner, offset, 2).await.unwrap();
        assert!(page.items.is_empty(), "offset {offset}");
        assert_eq!(page.next, None, "offset {offset}");
    }

    assert_eq!(all_sessions(store, &other).await.len(), 5);
    assert!(
        all_sessions(store, &other)
            .await
            .iter()
            .all(|s| s.owner == other)
    );
}

/// list_messages returns the stored order and pages with `next` offsets.
async fn check_list_messages(store: &dyn Store) {
    let (owner, id) = (uid("owner"), uid("session"));
    let all: Vec<StoredMessage> = (0..7)
        .map(|n| {
            msg(
                if n % 2 == 0 { "user" } else { "assistant" },
                &format!("m{n}"),
                at(n),
            )
        })
        .collect();
    // Three from the create, four from a turn: pages cross the boundary.
    assert!(created(store, &session(&owner, &id, at(0)), &all[..3]).await);
    acquire(store, &owner, &id, "t", LEASE).await;
    assert_eq!(
        store
            .append_turn(
                &owner,
                &id,
                fence("t"),
                &all[3..],
                at(7),
                SessionCaps::UNLIMITED
            )
            .await
            .unwrap(),
        AppendOutcome::Appended
    );

    let expect = |offset: u64, limit: u32, range: std::ops::Range<usize>, next: Option<u64>| {
        let all = all.clone();
        let (owner, id) = (owner.clone(), id.clone());
        async move {
            let page = store
                .list_messages(&owner, &id, offset, limit)
                .await
                .unwrap();
            assert_eq!(page.items, all[range], "offset {offset} limit {limit}");
            assert_eq!(page.next, next, "offset {offset} limit {limit}");
        }
    };
    expect(0, 3, 0..3, Some(3)).await;
    expect(3, 3, 3..6, Some(6)).await;
    expect(6, 3, 6..7, None).await;
    expect(2, 4, 2..6, Some(6)).await;
    expect(0, 7, 0..7, None).await;
    expect(0, 100, 0..7, None).await;
    expect(7, 3, 7..7, None).await;
    expect(100, 3, 7..7, None).await;

    let page = store
        .list_messages(&owner, &uid("missing"), 0, 10)
        .await
        .unwrap();
    assert!(page.items.is_empty());
    assert_eq!(page.next, None);
}

/// message_count is the real number of stored messages after create and
/// after each appended turn; an append also moves updated_at.
async fn check_message_count(store: &dyn Store) {
    let (owner, id) = (uid("owner"), uid("session"));
    let mut s = session(&owner, &id, at(0));
    s.message_count = 99; // ignored on writes
    assert!(created(store, &s, &turn(0, at(0))).await);
    let stored = store.get_session(&owner, &id).await.unwrap().unwrap();
    assert_eq!(stored.message_count, 2);

    let (locked, history) = acquire(store, &owner, &id, "t1", LEASE).await;
    assert_eq!(locked.message_count, 2);
    assert_eq!(history.len(), 2);
    assert_eq!(
        store
            .append_turn(
                &owner,
                &id,
                fence("t1"),
                &turn(1, at(5)),
                at(5),
                SessionCaps::UNLIMITED
            )
            .await
            .unwrap(),
        AppendOutcome::Appended
    );
    let stored = store.get_session(&owner, &id).await.unwrap().unwrap();
    assert_eq!(stored.message_count, 4);
    assert_eq!(stored.updated_at, at(5));
    assert_eq!(stored.created_at, at(0));

    acquire(store, &owner, &id, "t2", LEASE).await;
    let three = vec![
        msg("user", "a", at(9)),
        msg("tool", "b", at(9)),
        msg("assistant", "c", at(9)),
    ];
    assert_eq!(
        store
            .append_turn(
                &owner,
                &id,
                fence("t2"),
                &three,
                at(9),
                SessionCaps::UNLIMITED
            )
            .await
            .unwrap(),
        AppendOutcome::Appended
    );
    let stored = store.get_session(&owner, &id).await.unwrap().unwrap();
    assert_eq!(stored.message_count, 7);
    assert_eq!(stored.updated_at, at(9));
    assert_eq!(all_messages(store, &owner, &id).await.len(), 7);
    assert_eq!(all_sessions(store, &owner).await[0].message_count, 7);
    let (locked, history) = acquire(store, &owner, &id, "t3", LEASE).await;
    assert_eq!(locked.message_count, 7);
    assert_eq!(history.len(), 7);
    store.unlock_session(&owner, &id, "t3").await.unwrap();

    let empty = uid("empty");
    assert!(created(store, &session(&owner, &empty, at(1)), &[]).await);
    assert_eq!(
        store
            .get_session(&owner, &empty)
            .await
            .unwrap()
            .unwrap()
            .message_count,
        0
    );
}

/// Delete removes the session and its history, a second delete is false,
/// other sessions are untouched, and the id can be reused from scratch.
async fn check_delete_session(store: &dyn Store) {
    let owner = uid("owner");
    let (doomed, kept) = (uid("doomed"), uid("kept"));
    let d = session(&owner, &doomed, at(0));
    let k = session(&owner, &kept, at(1));
    let kept_history = turn(1, at(1));
    assert!(created(store, &d, &turn(0, at(0))).await);
    assert!(created(store, &k, &kept_history).await);

    assert!(store.delete_session(&owner, &doomed).await.unwrap());
    assert_eq!(store.get_session(&owner, &doomed).await.unwrap(), None);
    assert!(all_messages(store, &owner, &doomed).await.is_empty());
    assert_eq!(
        lock_outcome(store, &owner, &doomed, "t").await,
        LockOutcome::NoSession
    );
    assert!(!store.delete_session(&owner, &doomed).await.unwrap());

    assert_eq!(
        store.get_session(&owner, &kept).await.unwrap(),
        Some(counted(&k, 2))
    );
    assert_eq!(all_messages(store, &owner, &kept).await, kept_history);
    assert_eq!(all_sessions(store, &owner).await, vec![counted(&k, 2)]);

    // Recreated, the id starts from an empty history.
    let fresh = vec![msg("user", "fresh start", at(3))];
    assert!(created(store, &session(&owner, &doomed, at(3)), &fresh).await);
    assert_eq!(all_messages(store, &owner, &doomed).await, fresh);
    assert_eq!(
        store
            .get_session(&owner, &doomed)
            .await
            .unwrap()
            .unwrap()
            .message_count,
        1
    );
}

/// Locking returns the full history; another token gets Busy (the holder may
/// refresh); unlock by a non-holder does nothing; after unlock a new token acquires.
async fn check_lock_session(store: &dyn Store) {
    let (owner, id) = (uid("owner"), uid("session"));
    let s = session(&owner, &id, at(0));
    assert!(created(store, &s, &turn(0, at(0))).await);
    acquire(store, &owner, &id, "setup", LEASE).await;
    assert_eq!(
        store
            .append_turn(
                &owner,
                &id,
                fence("setup"),
                &turn(1, at(4)),
                at(4),
                SessionCaps::UNLIMITED
            )
            .await
            .unwrap(),
        AppendOutcome::Appended
    );
    let mut full = turn(0, at(0));
    full.extend(turn(1, at(4)));

    let (locked, history) = acquire(store, &owner, &id, "a", LEASE).await;
    let mut expected = counted(&s, 4);
    expected.updated_at = at(4);
    assert_eq!(locked, expected);
    assert_eq!(history, full);

    assert_eq!(
        lock_outcome(store, &owner, &id, "b").await,
        LockOutcome::Busy
    );
    let (_, history) = acquire(store, &owner, &id, "a", LEASE).await;
    assert_eq!(history, full, "the holder may take its lock again");

    store.unlock_session(&owner, &id, "b").await.unwrap();
    assert_eq!(
        lock_outcome(store, &owner, &id, "c").await,
        LockOutcome::Busy,
        "unlock by a token that does not hold the lock must do nothing"
    );

    store.unlock_session(&owner, &id, "a").await.unwrap();
    let (_, history) = acquire(store, &owner, &id, "c", LEASE).await;
    assert_eq!(history, full);
    store.unlock_session(&owner, &id, "c").await.unwrap();
}

/// A turn reads only what fits its budget: the system prompt at the head, then the latest
/// messages walking back while they fit (each costing its stored count plus 5), with their
/// indices; `complete` says whether older ones were left unread.
async fn check_lock_reads_a_bounded_tail(store: &dyn Store) {
    let (owner, id) = (uid("owner"), uid("session"));
    let mut all = vec![
        msg("system", "You are terse.", at(0)),
        msg("system", "Answer in English.", at(0)),
    ];
    for n in 0..20 {
        all.extend(turn(n, at(0)));
    }
    assert!(created(store, &session(&owner, &id, at(0)), &all).await);
    let cost = |m: &StoredMessage| u64::from(m.tokens.unwrap()) + 5;
    let head_cost: u64 = all[..2].iter().map(cost).sum();
    // Room for exactly the last 7 messages beside the head (window less maxTokens 256 less fixed 10).
    let tail_cost: u64 = all[all.len() - 7..].iter().map(cost).sum();
    let window = (256 + 10 + head_cost + tail_cost) as u32;
    let history = acquire_within(store, &owner, &id, "a", &budget(window, 10)).await;
    assert_eq!(history.len, all.len() as u64);
    assert_eq!(history.head, all[..2].to_vec());
    assert_eq!(history.summary, None);
    assert!(!history.complete, "older messages were left unread");
    let expected: Vec<(u64, StoredMessage)> = (all.len() - 7..all.len())
        .map(|i| (i as u64, all[i].clone()))
        .collect();
    assert_eq!(history.tail, expected);
    // One token less: one message less.
    store.unlock_session(&owner, &id, "a").await.unwrap();
    let history = acquire_within(store, &owner, &id, "b", &budget(window - 1, 10)).await;
    assert_eq!(history.tail, expected[1..].to_vec());
    // The turn's maxTokens takes the place of the session's.
    store.unlock_session(&owner, &id, "b").await.unwrap();
    let mut own = budget(window - 256 + 100, 10);
    own.max_tokens = Some(100);
    let history = acquire_within(store, &owner, &id, "c", &own).await;
    assert_eq!(history.tail, expected);
    // Another model's window does not apply; a budget that holds everything reads everything.
    store.unlock_session(&owner, &id, "c").await.unwrap();
    let history = acquire_within(store, &owner, &id, "d", &budget(1_000_000, 10)).await;
    assert!(history.complete);
    assert_eq!(history.messages(), all);
    // Not even the head fits: the head is read anyway, and nothing else.
    store.unlock_session(&owner, &id, "d").await.unwrap();
    let history = acquire_within(store, &owner, &id, "e", &budget(300, 10)).await;
    assert_eq!(history.head, all[..2].to_vec());
    assert!(history.tail.is_empty() && !history.complete);
    store.unlock_session(&owner, &id, "e").await.unwrap();
}

/// A compaction summary is stored under the turn's lock (which stays held), marked, and from
/// then on read in place of what it stands for: the tail starts where the summary ends, without
/// the summary itself, which comes separately. Only the lock's holder may store one.
async fn check_summary_is_read_in_place_of_what_it_covers(store: &dyn Store) {
    let (owner, id) = (uid("owner"), uid("session"));
    let mut all = vec![msg("system", "Be kind.", at(0))];
    for n in 0..6 {
        all.extend(turn(n, at(0)));
    }
    assert!(created(store, &session(&owner, &id, at(0)), &all).await);
    acquire(store, &owner, &id, "a", LEASE).await;
    let mut summary = msg("system", "Summary: questions 0 to 3 were answered.", at(1));
    summary.summary = Some(SummaryOf { from: 1, to: 9 });
    assert_eq!(
        store
            .append_summary(&owner, &id, fence("other"), &summary)
            .await
            .unwrap(),
        AppendOutcome::LockLost
    );
    assert_eq!(
        store
            .append_summary(&owner, &id, fence("a"), &summary)
            .await
            .unwrap(),
        AppendOutcome::Appended
    );
    assert_eq!(
        lock_outcome(store, &owner, &id, "b").await,
        LockOutcome::Busy,
        "the turn still holds its lock"
    );
    assert_eq!(
        store
            .append_turn(
                &owner,
                &id,
                fence("a"),
                &turn(6, at(2)),
                at(2),
                SessionCaps::UNLIMITED
            )
            .await
            .unwrap(),
        AppendOutcome::Appended
    );
    // The whole history shows the summary where it was stored, marked.
    let mut stored = all.clone();
    stored.push(summary.clone());
    stored.extend(turn(6, at(2)));
    assert_eq!(all_messages(store, &owner, &id).await, stored);

    let history = acquire_within(store, &owner, &id, "c", &budget(1_000_000, 10)).await;
    assert_eq!(history.head, all[..1].to_vec());
    assert_eq!(history.summary, Some((13, summary.clone())));
    let tail_indices: Vec<u64> = history.tail.iter().map(|(i, _)| *i).collect();
    assert_eq!(tail_indices, vec![9, 10, 11, 12, 14, 15]);
    assert!(history.complete);
    assert_eq!(history.len, 16);
    store.unlock_session(&owner, &id, "c").await.unwrap();
    // Bounded, the summary still comes and counts: the two latest messages fit beside it.
    let cost = |m: &StoredMessage| u64::from(m.tokens.unwrap()) + 5;
    let window = 256 + 10 + cost(&all[0]) + cost(&summary) + cost(&stored[14]) + cost(&stored[15]);
    let history = acquire_within(store, &owner, &id, "d", &budget(window as u32, 10)).await;
    assert_eq!(history.summary, Some((13, summary.clone())));
    let tail_indices: Vec<u64> = history.tail.iter().map(|(i, _)| *i).collect();
    assert_eq!(tail_indices, vec![14, 15]);
    assert!(!history.complete);
    store.unlock_session(&owner, &id, "d").await.unwrap();
    // A later summary replaces it as the latest.
    acquire(store, &owner, &id, "e", LEASE).await;
    let mut later = msg("system", "Summary: everything up to question 6.", at(3));
    later.summary = Some(SummaryOf { from: 1, to: 14 });
    assert_eq!(
        store
            .append_summary(&owner, &id, fence("e"), &later)
            .await
            .unwrap(),
        AppendOutcome::Appended
    );
    store.unlock_session(&owner, &id, "e").await.unwrap();
    let history = acquire_within(store, &owner, &id, "f", &budget(1_000_000, 10)).await;
    assert_eq!(history.summary, Some((16, later)));
    let tail_indices: Vec<u64> = history.tail.iter().map(|(i, _)| *i).collect();
    assert_eq!(tail_indices, vec![14, 15]);
    // Deleted meanwhile: the session is gone, and nothing is written.
    assert!(store.delete_session(&owner, &id).await.unwrap());
    assert_eq!(
        store
            .append_summary(&owner, &id, fence("f"), &summary)
            .await
            .unwrap(),
        AppendOutcome::SessionGone
    );
    assert!(all_messages(store, &owner, &id).await.is_empty());
}

/// Messages stored before token counts existed are still read: unbounded, all of them; bounded,
/// never more than fits when counted for real.
async fn check_uncounted_messages_are_read_conservatively(store: &dyn Store) {
    let (owner, id) = (uid("owner"), uid("session"));
    let all: Vec<StoredMessage> = (0..12)
        .map(|n| StoredMessage {
            tokens: None,
            ..msg(
                if n % 2 == 0 { "user" } else { "assistant" },
                &format!("message number {n} from before token counts"),
                at(0),
            )
        })
        .collect();
    assert!(created(store, &session(&owner, &id, at(0)), &all).await);
    let (_, history) = acquire(store, &owner, &id, "a", LEASE).await;
    assert_eq!(history, all);
    store.unlock_session(&owner, &id, "a").await.unwrap();
    let room = 60;
    let history = acquire_within(store, &owner, &id, "b", &budget(256 + 10 + room, 10)).await;
    let read: u64 = history.tail.iter().map(|(_, m)| m.prompt_cost()).sum();
    assert!(read <= u64::from(room), "{read} > {room}");
    assert!(!history.complete);
    // Costed by their content, not their whole stored form: the latest one (41 bytes) fits.
    assert!(
        !history.tail.is_empty(),
        "an uncounted message is costed too high"
    );
    for (index, message) in &history.tail {
        assert_eq!(message, &all[*index as usize]);
    }
    store.unlock_session(&owner, &id, "b").await.unwrap();
}

/// Locking a session that does not exist is NoSession, and leaves no lock behind.
async fn check_lock_missing_session(store: &dyn Store) {
    let (owner, id) = (uid("owner"), uid("session"));
    assert_eq!(
        lock_outcome(store, &owner, &id, "a").await,
        LockOutcome::NoSession
    );
    assert!(created(store, &session(&owner, &id, at(0)), &[]).await);
    let (_, history) = acquire(store, &owner, &id, "b", LEASE).await;
    assert!(history.is_empty());
    assert_eq!(
        lock_outcome(store, &owner, &uid("other"), "b").await,
        LockOutcome::NoSession
    );
    store.unlock_session(&owner, &id, "b").await.unwrap();
}

/// With a 200 ms lease, after 400 ms another token acquires, and an append
/// with the old token is LockLost and writes nothing.
async fn check_lease_expiry(store: &dyn Store) {
    let (owner, id) = (uid("owner"), uid("session"));
    let history = turn(0, at(0));
    assert!(created(store, &session(&owner, &id, at(0)), &history).await);
    acquire(store, &owner, &id, "old", Duration::from_millis(200)).await;
    assert_eq!(
        lock_outcome(store, &owner, &id, "new").await,
        LockOutcome::Busy
    );

    tokio::time::sleep(Duration::from_millis(400)).await;
    let (_, seen) = acquire(store, &owner, &id, "new", LEASE).await;
    assert_eq!(seen, history);
    let before = snapshot(store, &owner, &id).await;

    assert_eq!(
        store
            .append_turn(
                &owner,
                &id,
                fence("old"),
                &turn(1, at(5)),
                at(5),
                SessionCaps::UNLIMITED
            )
            .await
            .unwrap(),
        AppendOutcome::LockLost
    );
    assert_eq!(snapshot(store, &owner, &id).await, before);
    assert_eq!(
        lock_outcome(store, &owner, &id, "third").await,
        LockOutcome::Busy,
        "a lost append must not release the new holder's lock"
    );

    assert_eq!(
        store
            .append_turn(
                &owner,
                &id,
                fence("new"),
                &turn(2, at(6)),
                at(6),
                SessionCaps::UNLIMITED
            )
            .await
            .unwrap(),
        AppendOutcome::Appended
    );
    let mut expected = history.clone();
    expected.extend(turn(2, at(6)));
    assert_eq!(all_messages(store, &owner, &id).await, expected);
}

/// append_turn writes every message of the turn and releases the lock: a new
/// token acquires at once, and the old token can no longer append.
async fn check_append_turn(store: &dyn Store) {
    let (owner, id) = (uid("owner"), uid("session"));
    let first = vec![msg("system", "be brief", at(0))];
    assert!(created(store, &session(&owner, &id, at(0)), &first).await);
    acquire(store, &owner, &id, "a", LEASE).await;
    let whole_turn = vec![
        msg("user", "what is 2+2?", at(1)),
        msg("tool", "calculator: 4", at(2)),
        msg("assistant", "4", at(3)),
    ];
    assert_eq!(
        store
            .append_turn(
                &owner,
                &id,
                fence("a"),
                &whole_turn,
                at(3),
                SessionCaps::UNLIMITED
            )
            .await
            .unwrap(),
        AppendOutcome::Appended
    );
    let mut expected = first.clone();
    expected.extend(whole_turn.clone());
    assert_eq!(all_messages(store, &owner, &id).await, expected);

    let (locked, history) = acquire(store, &owner, &id, "b", LEASE).await;
    assert_eq!(history, expected);
    assert_eq!(locked.message_count, 4);
    assert_eq!(locked.updated_at, at(3));

    assert_eq!(
        store
            .append_turn(
                &owner,
                &id,
                fence("a"),
                &turn(9, at(9)),
                at(9),
                SessionCaps::UNLIMITED
            )
            .await
            .unwrap(),
        AppendOutcome::LockLost,
        "an append releases the lock, so the old token holds nothing"
    );
    assert_eq!(all_messages(store, &owner, &id).await, expected);
    store.unlock_session(&owner, &id, "b").await.unwrap();
}

/// An append after the session was deleted is SessionGone, writes nothing,
/// and releases the lock.
async fn check_append_after_delete(store: &dyn Store) {
    let (owner, id) = (uid("owner"), uid("session"));
    assert!(created(store, &session(&owner, &id, at(0)), &turn(0, at(0))).await);
    acquire(store, &owner, &id, "a", LEASE).await;
    assert!(store.delete_session(&owner, &id).await.unwrap());
    assert_eq!(
        store
            .append_turn(
                &owner,
                &id,
                fence("a"),
                &turn(1, at(1)),
                at(1),
                SessionCaps::UNLIMITED
            )
            .await
            .unwrap(),
        AppendOutcome::SessionGone
    );
    assert_eq!(store.get_session(&owner, &id).await.unwrap(), None);
    assert!(all_messages(store, &owner, &id).await.is_empty());
    assert!(all_sessions(store, &owner).await.is_empty());

    // Recreated, the session is not locked by the dead turn.
    assert!(created(store, &session(&owner, &id, at(2)), &[]).await);
    let (_, history) = acquire(store, &owner, &id, "b", LEASE).await;
    assert!(history.is_empty());
    store.unlock_session(&owner, &id, "b").await.unwrap();
}

/// A session deleted and created again under the same id is another incarnation: a turn
/// begun on the old one stores nothing in it (SessionGone, with or without a recorded result),
/// keeps no lock on it, and does not release the new one's holder; the new incarnation's own
/// turns store as usual.
async fn check_append_refuses_another_incarnation(store: &dyn Store) {
    let (owner, id) = (uid("owner"), uid("session"));
    assert!(created(store, &session(&owner, &id, at(0)), &turn(0, at(0))).await);
    let (seen, _) = acquire(store, &owner, &id, "old", LEASE).await;
    assert_eq!(seen.incarnation, FIRST_LIFE, "a lock reads the incarnation");
    assert!(store.delete_session(&owner, &id).await.unwrap());
    let second = SessionRecord {
        incarnation: "second-life".into(),
        ..session(&owner, &id, at(1))
    };
    assert!(created(store, &second, &turn(1, at(1))).await);

    // The old turn's lock went with the old session: the new one is not held up by it.
    let (seen, history) = acquire(store, &owner, &id, "new", LEASE).await;
    assert_eq!(seen.incarnation, "second-life");
    assert_eq!(history, turn(1, at(1)));
    let before = snapshot(store, &owner, &id).await;

    assert_eq!(
        store
            .append_turn(
                &owner,
                &id,
                fence("old"),
                &turn(9, at(9)),
                at(9),
                SessionCaps::UNLIMITED
            )
            .await
            .unwrap(),
        AppendOutcome::SessionGone
    );
    assert_eq!(
        store
            .append_turn_recording(
                &owner,
                &id,
                fence("old"),
                &turn(9, at(9)),
                at(9),
                recorded("old-request", RESULT_BODY, LEASE),
                SessionCaps::UNLIMITED,
            )
            .await
            .unwrap(),
        AppendOutcome::SessionGone
    );
    assert_eq!(snapshot(store, &owner, &id).await, before);
    assert_eq!(
        store
            .recorded_result(&owner, &id, "old-request")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        lock_outcome(store, &owner, &id, "third").await,
        LockOutcome::Busy,
        "a refused append must not release the new incarnation's holder"
    );

    // Even holding the new lock's token, a fence naming the old incarnation stores nothing.
    let stale = TurnFence {
        token: "new",
        incarnation: FIRST_LIFE,
    };
    assert_eq!(
        store
            .append_turn(
                &owner,
                &id,
                stale,
                &turn(9, at(9)),
                at(9),
                SessionCaps::UNLIMITED
            )
            .await
            .unwrap(),
        AppendOutcome::SessionGone
    );
    assert_eq!(snapshot(store, &owner, &id).await, before);

    let (seen, _) = acquire(store, &owner, &id, "newer", LEASE).await;
    let fence = TurnFence {
        token: "newer",
        incarnation: &seen.incarnation,
    };
    assert_eq!(
        store
            .append_turn(
                &owner,
                &id,
                fence,
                &turn(2, at(2)),
                at(2),
                SessionCaps::UNLIMITED
            )
            .await
            .unwrap(),
        AppendOutcome::Appended
    );
    let mut expected = turn(1, at(1));
    expected.extend(turn(2, at(2)));
    assert_eq!(all_messages(store, &owner, &id).await, expected);
}

/// 20 concurrent turns (lock, retrying on Busy; append a numbered question
/// and answer) leave 40 messages, each question directly followed by its own
/// answer, never interleaved.
async fn check_concurrent_turns(store: &dyn Store) {
    const TURNS: usize = 20;
    let (owner, id) = (uid("owner"), uid("session"));
    assert!(created(store, &session(&owner, &id, at(0)), &[]).await);

    let turns = (0..TURNS).map(|n| {
        let (owner, id) = (owner.clone(), id.clone());
        async move {
            let token = uid("turn");
            let mut attempts = 0;
            loop {
                match lock_outcome(store, &owner, &id, &token).await {
                    LockOutcome::Acquired { .. } => break,
                    LockOutcome::Busy => {
                        attempts += 1;
                        assert!(attempts < 5_000, "turn {n} never got the lock");
                        tokio::time::sleep(Duration::from_millis(3)).await;
                    }
                    LockOutcome::NoSession => panic!("session vanished"),
                }
            }
            // Give the others a chance to try the lock while this turn holds it.
            tokio::task::yield_now().await;
            let outcome = store
                .append_turn(
                    &owner,
                    &id,
                    fence(&token),
                    &turn(n, at(1)),
                    at(1),
                    SessionCaps::UNLIMITED,
                )
                .await
                .unwrap();
            assert_eq!(outcome, AppendOutcome::Appended, "turn {n}");
        }
    });
    join_all(turns).await;

    let history = all_messages(store, &owner, &id).await;
    assert_eq!(history.len(), 2 * TURNS);
    let mut seen = BTreeSet::new();
    for pair in history.chunks(2) {
        let n: usize = pair[0]
            .content
            .strip_prefix("question ")
            .unwrap_or_else(|| panic!("expected a question, got {:?}", pair[0]))
            .parse()
            .unwrap();
        assert_eq!(pair[0].role, "user");
        assert_eq!(pair[1].role, "assistant");
        assert_eq!(
            pair[1].content,
            format!("answer {n}"),
            "turns interleaved: {:?}",
            contents(&history)
        );
        assert!(seen.insert(n), "turn {n} stored twice");
    }
    assert_eq!(seen.len(), TURNS);
    assert_eq!(
        store
            .get_session(&owner, &id)
            .await
            .unwrap()
            .unwrap()
            .message_count,
        (2 * TURNS) as u32
    );
}

/// Unicode (emoji, joiners, combining marks, right-to-left, control
/// characters, JSON metacharacters) and large (100 KB) content round-trip exactly.
async fn check_unicode_and_large_content(store: &dyn Store) {
    let owner = uid("owner");
    let id = format!("séance-🦀-{}", uuid::Uuid::new_v4());
    let mut s = session(&owner, &id, at(0));
    s.model = "模型/🦀 \"quoted\"".into();
    s.status = "actif ✓".into();

    let unicode = "héllo wörld — ✓ 你好 مرحبا עולם 🦀👩‍👩‍👧‍👦🏳️‍🌈 e\u{301} \u{200b}\u{feff}\t\r\n\u{7f}\u{1b}[0m \"quotes\" \\backslash\\ {\"json\": [1, 2]} ' < > &";
    let mut large = String::new();
    while large.len() < 100 * 1024 {
        large.push_str("Lorem ipsum 🦀 dolor — ∑ 你好世界 \"x\"\\ ");
    }
    let first = vec![
        msg("user", unicode, at(1)),
        msg("assistant", &large, at(2)),
        msg("user", "", at(3)),
    ];
    assert!(created(store, &s, &first).await);
    assert_eq!(
        store.get_session(&owner, &id).await.unwrap(),
        Some(counted(&s, 3))
    );
    assert_eq!(all_messages(store, &owner, &id).await, first);

    let (_, history) = acquire(store, &owner, &id, "🔑 token", LEASE).await;
    assert_eq!(history, first);
    let mut large_reply = large.clone();
    large_reply.push_str(unicode);
    let second = vec![
        msg("user", &large_reply, at(4)),
        msg("assistant", unicode, at(5)),
    ];
    assert_eq!(
        store
            .append_turn(
                &owner,
                &id,
                fence("🔑 token"),
                &second,
                at(5),
                SessionCaps::UNLIMITED
            )
            .await
            .unwrap(),
        AppendOutcome::Appended
    );
    let mut expected = first.clone();
    expected.extend(second);
    assert_eq!(all_messages(store, &owner, &id).await, expected);
    let page = store.list_messages(&owner, &id, 3, 1).await.unwrap();
    assert_eq!(page.items[0].content, large_reply);
    assert_eq!(page.next, Some(4));
    assert_eq!(all_sessions(store, &owner).await[0].model, s.model);
}

/// Refused writes (a duplicate create, appends without the lock, after losing
/// it, or to a missing session) leave everything exactly as it was.
async fn check_refused_writes_change_nothing(store: &dyn Store) {
    let owner = uid("owner");
    let (id, neighbour) = (uid("session"), uid("neighbour"));
    assert!(created(store, &session(&owner, &id, at(0)), &turn(0, at(0))).await);
    assert!(created(store, &session(&owner, &neighbour, at(1)), &turn(1, at(1))).await);
    let before = snapshot(store, &owner, &id).await;
    let neighbour_before = snapshot(store, &owner, &neighbour).await;

    let mut duplicate = session(&owner, &id, at(9));
    duplicate.model = "hijack".into();
    assert!(!created(store, &duplicate, &turn(9, at(9))).await);
    assert_eq!(
        snapshot(store, &owner, &id).await,
        before,
        "after a duplicate create"
    );

    assert_eq!(
        store
            .append_turn(
                &owner,
                &id,
                fence("never-locked"),
                &turn(9, at(9)),
                at(9),
                SessionCaps::UNLIMITED
            )
            .await
            .unwrap(),
        AppendOutcome::LockLost
    );
    assert_eq!(
        snapshot(store, &owner, &id).await,
        before,
        "after an unlocked append"
    );

    acquire(store, &owner, &id, "old", Duration::from_millis(200)).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    acquire(store, &owner, &id, "new", LEASE).await;
    assert_eq!(
        store
            .append_turn(
                &owner,
                &id,
                fence("old"),
                &turn(9, at(9)),
                at(9),
                SessionCaps::UNLIMITED
            )
            .await
            .unwrap(),
        AppendOutcome::LockLost
    );
    assert_eq!(
        snapshot(store, &owner, &id).await,
        before,
        "after a lost lock"
    );

    assert_eq!(
        store
            .append_turn(
                &owner,
                &uid("missing"),
                fence("new"),
                &turn(9, at(9)),
                at(9),
                SessionCaps::UNLIMITED
            )
            .await
            .unwrap(),
        AppendOutcome::SessionGone
    );
    store.unlock_session(&owner, &id, "new").await.unwrap();
    assert_eq!(snapshot(store, &owner, &id).await, before);
    assert_eq!(snapshot(store, &owner, &neighbour).await, neighbour_before);
}

/// A recorded result: binary-safe, under its request id.
fn recorded<'a>(request_id: &'a str, body: &'a [u8], retention: Duration) -> RecordedResult<'a> {
    RecordedResult {
        request_id,
        body,
        retention,
    }
}

const RESULT_BODY: &[u8] = b"\x00\xff{\"reply\": \"4\"}\n\r\x01";

/// append_turn_recording stores the turn and its request's result together,
/// releases the lock, and the result reads back byte for byte, under that
/// owner, session and request id only.
async fn check_recorded_result_is_written_with_its_turn(store: &dyn Store) {
    let (owner, id) = (uid("owner"), uid("session"));
    let other = uid("session");
    for session_id in [&id, &other] {
        assert!(created(store, &session(&owner, session_id, at(0)), &[]).await);
    }
    acquire(store, &owner, &id, "a", LEASE).await;
    assert_eq!(
        store
            .append_turn_recording(
                &owner,
                &id,
                fence("a"),
                &turn(1, at(1)),
                at(1),
                recorded("req-1", RESULT_BODY, LEASE),
                SessionCaps::UNLIMITED,
            )
            .await
            .unwrap(),
        AppendOutcome::Appended
    );
    assert_eq!(
        contents(&all_messages(store, &owner, &id).await),
        ["question 1", "answer 1"]
    );
    assert_eq!(
        store.recorded_result(&owner, &id, "req-1").await.unwrap(),
        Some(RESULT_BODY.to_vec())
    );
    for (o, s, r) in [
        (owner.as_str(), id.as_str(), "req-2"),
        (owner.as_str(), other.as_str(), "req-1"),
        ("someone-else", id.as_str(), "req-1"),
    ] {
        assert_eq!(
            store.recorded_result(o, s, r).await.unwrap(),
            None,
            "{o}/{s}/{r}"
        );
    }
    let (locked, _) = acquire(store, &owner, &id, "b", LEASE).await;
    assert_eq!(locked.message_count, 2, "the append released the lock");
    // A second record in the same session keeps the first.
    assert_eq!(
        store
            .append_turn_recording(
                &owner,
                &id,
                fence("b"),
                &turn(2, at(2)),
                at(2),
                recorded("req-2", b"second", LEASE),
                SessionCaps::UNLIMITED,
            )
            .await
            .unwrap(),
        AppendOutcome::Appended
    );
    assert_eq!(
        store.recorded_result(&owner, &id, "req-1").await.unwrap(),
        Some(RESULT_BODY.to_vec())
    );
    assert_eq!(
        store.recorded_result(&owner, &id, "req-2").await.unwrap(),
        Some(b"second".to_vec())
    );
}

/// A recording append without the lock, or on a deleted session, writes
/// neither the turn nor the result.
async fn check_recorded_result_needs_the_turn(store: &dyn Store) {
    let (owner, id) = (uid("owner"), uid("session"));
    assert!(created(store, &session(&owner, &id, at(0)), &turn(0, at(0))).await);
    let before = snapshot(store, &owner, &id).await;
    acquire(store, &owner, &id, "holder", LEASE).await;
    assert_eq!(
        store
            .append_turn_recording(
                &owner,
                &id,
                fence("intruder"),
                &turn(1, at(1)),
                at(1),
                recorded("req-1", RESULT_BODY, LEASE),
                SessionCaps::UNLIMITED,
            )
            .await
            .unwrap(),
        AppendOutcome::LockLost
    );
    assert_eq!(snapshot(store, &owner, &id).await, before);
    assert_eq!(
        store.recorded_result(&owner, &id, "req-1").await.unwrap(),
        None
    );
    assert!(store.delete_session(&owner, &id).await.unwrap());
    assert_eq!(
        store
            .append_turn_recording(
                &owner,
                &id,
                fence("holder"),
                &turn(1, at(1)),
                at(1),
                recorded("req-1", RESULT_BODY, LEASE),
                SessionCaps::UNLIMITED,
            )
            .await
            .unwrap(),
        AppendOutcome::SessionGone
    );
    assert_eq!(
        store.recorded_result(&owner, &id, "req-1").await.unwrap(),
        None
    );
}

/// A result is kept for its retention only; later writes prune expired ones.
async fn check_recorded_result_expires(store: &dyn Store) {
    let (owner, id) = (uid("owner"), uid("session"));
    assert!(created(store, &session(&owner, &id, at(0)), &[]).await);
    acquire(store, &owner, &id, "a", LEASE).await;
    store
        .append_turn_recording(
            &owner,
            &id,
            fence("a"),
            &turn(1, at(1)),
            at(1),
            recorded("short", RESULT_BODY, Duration::from_millis(300)),
            SessionCaps::UNLIMITED,
        )
        .await
        .unwrap();
    assert!(
        store
            .recorded_result(&owner, &id, "short")
            .await
            .unwrap()
            .is_some()
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        store.recorded_result(&owner, &id, "short").await.unwrap(),
        None
    );
    acquire(store, &owner, &id, "b", LEASE).await;
    store
        .append_turn_recording(
            &owner,
            &id,
            fence("b"),
            &turn(2, at(2)),
            at(2),
            recorded("long", RESULT_BODY, LEASE),
            SessionCaps::UNLIMITED,
        )
        .await
        .unwrap();
    assert_eq!(
        store.recorded_result(&owner, &id, "short").await.unwrap(),
        None
    );
    assert!(
        store
            .recorded_result(&owner, &id, "long")
            .await
            .unwrap()
            .is_some()
    );
}

/// Deleting a session deletes its recorded results: a session recreated
/// with the same id does not answer an old request.
async fn check_delete_session_drops_recorded_results(store: &dyn Store) {
    let (owner, id) = (uid("owner"), uid("session"));
    let neighbour = format!("{id}x");
    for session_id in [&id, &neighbour] {
        assert!(created(store, &session(&owner, session_id, at(0)), &[]).await);
        acquire(store, &owner, session_id, "a", LEASE).await;
        store
            .append_turn_recording(
                &owner,
                session_id,
                fence("a"),
                &turn(1, at(1)),
                at(1),
                recorded("req-1", RESULT_BODY, LEASE),
                SessionCaps::UNLIMITED,
            )
            .await
            .unwrap();
    }
    assert!(store.delete_session(&owner, &id).await.unwrap());
    assert!(created(store, &session(&owner, &id, at(2)), &[]).await);
    assert_eq!(
        store.recorded_result(&owner, &id, "req-1").await.unwrap(),
        None
    );
    assert_eq!(
        store
            .recorded_result(&owner, &neighbour, "req-1")
            .await
            .unwrap(),
        Some(RESULT_BODY.to_vec()),
        "a neighbour whose id extends the deleted one keeps its records"
    );
}

// ---------------------------------------------------------------- quotas

fn caps(max_sessions: u64, max_messages: u64, max_bytes: u64) -> SessionCaps {
    SessionCaps {
        max_sessions,
        max_messages,
        max_bytes,
    }
}

/// maxSessions: the owner's last slot is taken and one more create is refused, writing
/// nothing; an existing id is still "exists"; a deleted session frees its slot; another owner
/// has slots of its own.
async fn check_session_quota(store: &dyn Store) {
    let owner = uid("owner");
    let two = caps(2, u64::MAX, u64::MAX);
    let (a, b, c) = (uid("a"), uid("b"), uid("c"));
    for id in [&a, &b] {
        assert_eq!(
            store
                .create_session(&session(&owner, id, at(0)), &turn(0, at(0)), two)
                .await
                .unwrap(),
            CreateOutcome::Created
        );
    }
    assert_eq!(store.session_count(&owner).await.unwrap(), 2);
    assert_eq!(
        store
            .create_session(&session(&owner, &c, at(1)), &turn(0, at(1)), two)
            .await
            .unwrap(),
        CreateOutcome::OverQuota(CapBreach {
            cap: SessionCap::Sessions,
            limit: 2,
            used: 2
        })
    );
    assert_eq!(store.get_session(&owner, &c).await.unwrap(), None);
    assert_eq!(store.session_count(&owner).await.unwrap(), 2);
    let listed = store.list_sessions(&owner, 0, 10).await.unwrap();
    assert_eq!(
        listed.items.len(),
        2,
        "nothing listed for the refused create"
    );
    assert_eq!(
        store
            .create_session(&session(&owner, &a, at(2)), &[], two)
            .await
            .unwrap(),
        CreateOutcome::Exists,
        "an id that exists is reported as such, full or not"
    );
    assert_eq!(
        store
            .create_session(&session(&uid("other"), &c, at(1)), &[], two)
            .await
            .unwrap(),
        CreateOutcome::Created,
        "another owner's count is its own"
    );
    assert!(store.delete_session(&owner, &a).await.unwrap());
    assert_eq!(store.session_count(&owner).await.unwrap(), 1);
    assert_eq!(
        store
            .create_session(&session(&owner, &c, at(3)), &[], two)
            .await
            .unwrap(),
        CreateOutcome::Created
    );
    assert_eq!(store.session_count(&owner).await.unwrap(), 2);
}

/// Creates racing for the last slots: exactly the quota wins.
async fn check_session_quota_under_concurrency(store: &dyn Store) {
    let owner = uid("owner");
    let three = caps(3, u64::MAX, u64::MAX);
    let records: Vec<SessionRecord> = (0..12)
        .map(|n| session(&owner, &uid("racer"), at(n)))
        .collect();
    let outcomes = join_all(records.iter().map(|s| store.create_session(s, &[], three))).await;
    let created = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(CreateOutcome::Created)))
        .count();
    assert_eq!(created, 3, "{outcomes:?}");
    assert!(
        outcomes.iter().all(|o| matches!(
            o,
            Ok(CreateOutcome::Created) | Ok(CreateOutcome::OverQuota(_))
        )),
        "{outcomes:?}"
    );
    assert_eq!(store.session_count(&owner).await.unwrap(), 3);
    assert_eq!(
        store
            .list_sessions(&owner, 0, 20)
            .await
            .unwrap()
            .items
            .len(),
        3
    );
}

/// maxMessagesPerSession and maxSessionBytes: a turn that would pass either is refused whole
/// (nothing written, no result recorded) and releases the lock; the byte count runs on across
/// turns; first messages over a quota refuse the create.
async fn check_session_message_and_byte_quotas(store: &dyn Store) {
    let (owner, id) = (uid("owner"), uid("session"));
    // "question N" is 10 bytes and "answer N" 8: a turn is 2 messages, 18 bytes.
    assert_eq!(
        store
            .create_session(
                &session(&owner, &id, at(0)),
                &turn(0, at(0)),
                caps(10, 2, 18)
            )
            .await
            .unwrap(),
        CreateOutcome::Created
    );
    let before = all_messages(store, &owner, &id).await;
    acquire(store, &owner, &id, "t1", LEASE).await;
    assert_eq!(
        store
            .append_turn(
                &owner,
                &id,
                fence("t1"),
                &turn(1, at(1)),
                at(1),
                caps(10, 3, u64::MAX)
            )
            .await
            .unwrap(),
        AppendOutcome::OverQuota(CapBreach {
            cap: SessionCap::Messages,
            limit: 3,
            used: 2
        })
    );
    assert_eq!(
        all_messages(store, &owner, &id).await,
        before,
        "nothing written"
    );
    // The lock was released with the refusal: another token takes it at once.
    acquire(store, &owner, &id, "t2", LEASE).await;
    assert_eq!(
        store
            .append_turn_recording(
                &owner,
                &id,
                fence("t2"),
                &turn(1, at(1)),
                at(1),
                recorded("over", RESULT_BODY, LEASE),
                caps(10, u64::MAX, 35)
            )
            .await
            .unwrap(),
        AppendOutcome::OverQuota(CapBreach {
            cap: SessionCap::Bytes,
            limit: 35,
            used: 18
        })
    );
    assert_eq!(
        all_messages(store, &owner, &id).await,
        before,
        "nothing written"
    );
    assert_eq!(
        store.recorded_result(&owner, &id, "over").await.unwrap(),
        None,
        "no result recorded"
    );
    acquire(store, &owner, &id, "t3", LEASE).await;
    assert_eq!(
        store
            .append_turn(
                &owner,
                &id,
                fence("t3"),
                &turn(1, at(1)),
                at(1),
                caps(10, 4, 36)
            )
            .await
            .unwrap(),
        AppendOutcome::Appended,
        "exactly at both quotas"
    );
    // 36 bytes now: one more turn needs 54.
    acquire(store, &owner, &id, "t4", LEASE).await;
    assert_eq!(
        store
            .append_turn(
                &owner,
                &id,
                fence("t4"),
                &turn(2, at(2)),
                at(2),
                caps(10, 100, 53)
            )
            .await
            .unwrap(),
        AppendOutcome::OverQuota(CapBreach {
            cap: SessionCap::Bytes,
            limit: 53,
            used: 36
        })
    );
    acquire(store, &owner, &id, "t5", LEASE).await;
    assert_eq!(
        store
            .append_turn(
                &owner,
                &id,
                fence("t5"),
                &turn(2, at(2)),
                at(2),
                caps(10, 100, 54)
            )
            .await
            .unwrap(),
        AppendOutcome::Appended
    );
    assert_eq!(all_messages(store, &owner, &id).await.len(), 6);

    // A turn on a lock that is not ours is still "lost", whatever the quotas.
    assert_eq!(
        store
            .append_turn(
                &owner,
                &id,
                fence("t5"),
                &turn(3, at(3)),
                at(3),
                caps(10, 0, 0)
            )
            .await
            .unwrap(),
        AppendOutcome::LockLost
    );

    // First messages over a quota: nothing created.
    let fresh = uid("session");
    for (over, breach) in [
        (caps(10, 1, u64::MAX), SessionCap::Messages),
        (caps(10, u64::MAX, 17), SessionCap::Bytes),
    ] {
        match store
            .create_session(&session(&owner, &fresh, at(4)), &turn(4, at(4)), over)
            .await
            .unwrap()
        {
            CreateOutcome::OverQuota(got) => assert_eq!(got.cap, breach),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(store.get_session(&owner, &fresh).await.unwrap(), None);
    }
    assert_eq!(store.session_count(&owner).await.unwrap(), 1);
}

// ---------------------------------------------------------------- backends

/// A `redis-server` of this test's own on a free port, killed on drop.
struct RedisServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

enum Startup {
    Ready,
    Exited,
}

impl RedisServer {
    async fn start() -> Self {
        for _ in 0..10 {
            let port = free_port();
            let dir = tempfile::tempdir().expect("temp dir for redis-server");
            let spawned = Command::new("redis-server")
                .arg("--port")
                .arg(port.to_string())
                .args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
                .arg("--dir")
                .arg(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            let child = match spawned {
                Ok(child) => child,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                    "redis-server is not on PATH: the RedisStore conformance tests need a real \
                     Redis (install the redis-server package; CI does). These tests fail rather \
                     than skip so a missing Redis is never mistaken for a pass."
                ),
                Err(e) => panic!("cannot start redis-server: {e}"),
            };
            let mut server = RedisServer {
                child,
                port,
                _dir: dir,
            };
            match server.wait_ready().await {
                Startup::Ready => return server,
                // Most likely someone else took the port meanwhile: try another.
                Startup::Exited => continue,
            }
        }
        panic!("redis-server did not start after 10 attempts");
    }

    /// Waits until the server on our port is our own child and answers.
    async fn wait_ready(&mut self) -> Startup {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let pid = self.child.id();
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Startup::Exited;
            }
            if server_pid(self.port).await == Some(pid) {
                return Startup::Ready;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server on port {} did not accept connections within 10 s",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn store(&self) -> RedisStore {
        RedisStore::connect(&RedisConfig::standalone(
            format!("redis://127.0.0.1:{}", self.port),
            Duration::from_secs(1),
        ))
        .await
        .expect("connect to the test redis-server")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("find a free port")
        .port()
}

/// The `process_id` that the Redis server on `port` reports, if one answers.
async fn server_pid(port: u16) -> Option<u32> {
    let probe = async {
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        conn.write_all(b"INFO server\r\n").await.ok()?;
        let mut reply = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = conn.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            reply.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&reply);
            if let Some(rest) = text.split("process_id:").nth(1)
                && let Some(end) = rest.find("\r\n")
            {
                return rest[..end].trim().parse().ok();
            }
        }
    };
    tokio::time::timeout(Duration::from_millis(500), probe)
        .await
        .ok()
        .flatten()
}

/// One `#[tokio::test]` per (backend, check): `embedded_memory::check_keys`,
/// `embedded_file::check_keys`, `redis_store::check_keys`, …
macro_rules! conformance {
    ($($check:ident),+ $(,)?) => {
        mod embedded_memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let store = super::EmbeddedStore::open_temporary()
                        .expect("open an in-memory embedded store");
                    super::$check(&store).await;
                }
            )+
        }

        mod embedded_file {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let dir = tempfile::tempdir().expect("temp dir");
                    let store = super::EmbeddedStore::open(&dir.path().join("state/store.redb"))
                        .expect("open a file-backed embedded store");
                    super::$check(&store).await;
                }
            )+
        }

        mod redis_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let server = super::RedisServer::start().await;
                    let store = server.store().await;
                    super::$check(&store).await;
                    drop(store);
                    drop(server);
                }
            )+
        }

        /// Every check, one after another, on one store: for backends too costly to start
        /// once per check (a Redis Cluster). Checks name their own owners and ids, so they do
        /// not see each other's data.
        async fn every_check(store: &dyn Store) {
            $(
                eprintln!("conformance: {}", stringify!($check));
                $check(store).await;
            )+
        }
    };
}

conformance!(
    check_ping_and_name,
    check_keys,
    check_revocation_is_permanent,
    check_touch_never_undoes_an_update,
    check_create_session_once,
    check_owners_are_separate,
    check_other_owner_sees_nothing,
    check_ids_with_separator_characters,
    check_list_sessions,
    check_list_messages,
    check_message_count,
    check_delete_session,
    check_lock_session,
    check_lock_reads_a_bounded_tail,
    check_summary_is_read_in_place_of_what_it_covers,
    check_uncounted_messages_are_read_conservatively,
    check_lock_missing_session,
    check_lease_expiry,
    check_append_turn,
    check_append_after_delete,
    check_append_refuses_another_incarnation,
    check_concurrent_turns,
    check_unicode_and_large_content,
    check_refused_writes_change_nothing,
    check_recorded_result_is_written_with_its_turn,
    check_recorded_result_needs_the_turn,
    check_recorded_result_expires,
    check_delete_session_drops_recorded_results,
    check_idle_session_expires_everywhere,
    check_deleting_an_expired_session_finds_none,
    check_a_turn_keeps_a_session_alive,
    check_expires_at_ends_a_session_in_use,
    check_recorded_results_expire_with_their_session,
    check_sweep_keeps_live_sessions,
    check_session_quota,
    check_session_quota_under_concurrency,
    check_an_expired_session_frees_its_quota_slot,
    check_a_summary_counts_in_the_session_bytes,
    check_session_message_and_byte_quotas,
);

// ---------------------------------------------------------------- retention

/// A session created now, kept `idle_secs` after its last turn.
fn expiring(owner: &str, id: &str, idle_secs: u64) -> SessionRecord {
    SessionRecord {
        idle_ttl_seconds: idle_secs,
        ..session(owner, id, Utc::now())
    }
}

/// A session idle past its time to live is gone from every read, takes no lock and no turn,
/// and its id can be used again for a new session.
async fn check_idle_session_expires_everywhere(store: &dyn Store) {
    let (owner, id) = (uid("owner"), uid("session"));
    let s = expiring(&owner, &id, 1);
    assert!(created(store, &s, &turn(0, s.created_at)).await);
    let seen = store.get_session(&owner, &id).await.unwrap().expect("live");
    assert_eq!(seen.idle_ttl_seconds, 1, "the idle time to live is stored");
    assert_eq!(
        seen.expiry(),
        Some(s.updated_at + chrono::Duration::seconds(1))
    );
    assert_eq!(ids(&all_sessions(store, &owner).await), vec![id.clone()]);

    tokio::time::sleep(Duration::from_millis(1400)).await;
    assert_eq!(
        snapshot(store, &owner, &id).await,
        Snapshot {
            session: None,
            history: Vec::new(),
            listing: Vec::new(),
        },
        "an expired session is gone from get, history and listing"
    );
    assert_eq!(
        lock_outcome(store, &owner, &id, "late").await,
        LockOutcome::NoSession
    );

    // Created after the expired one, before its id is used again.
    let between = uid("between");
    assert!(created(store, &expiring(&owner, &between, 0), &[]).await);

    // The id is free again: a new session under it starts empty and is listed once, as the
    // newest.
    let again = SessionRecord {
        incarnation: "second-life".into(),
        ..expiring(&owner, &id, 0)
    };
    assert!(created(store, &again, &turn(5, again.created_at)).await);
    let seen = store
        .get_session(&owner, &id)
        .await
        .unwrap()
        .expect("recreated");
    assert_eq!(seen.incarnation, "second-life");
    assert_eq!(seen.expiry(), None, "kept until deleted");
    assert_eq!(
        contents(&all_messages(store, &owner, &id).await),
        vec!["question 5", "answer 5"]
    );
    let listed = all_sessions(store, &owner).await;
    assert_eq!(ids(&listed), vec![id.clone(), between]);
    assert_eq!(
        listed[0].created_at, again.created_at,
        "listed as the new session"
    );
}

/// Deleting an expired session finds nothing to delete, and leaves nothing behind.
async fn check_deleting_an_expired_session_finds_none(store: &dyn Store) {
    let (owner, id) = (uid("owner"), uid("session"));
    let s = expiring(&owner, &id, 1);
    assert!(created(store, &s, &turn(0, s.created_at)).await);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(
        !store.delete_session(&owner, &id).await.unwrap(),
        "an expired session is not there to delete"
    );
    assert_eq!(
        snapshot(store, &owner, &id).await,
        Snapshot {
            session: None,
            history: Vec::new(),
            listing: Vec::new(),
        }
    );
}

/// Each turn moves the expiry: a session used more often than its idle time to live stays.
async fn check_a_turn_keeps_a_session_alive(store: &dyn Store) {
    let (owner, id) = (uid("owner"), uid("session"));
    let s = expiring(&owner, &id, 1);
    assert!(created(store, &s, &turn(0, s.created_at)).await);
    for n in 1..=2 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let token = format!("t{n}");
        acquire(store, &owner, &id, &token, LEASE).await;
        let now = Utc::now();
        assert_eq!(
            store
                .append_turn(
                    &owner,
                    &id,
                    fence(&token),
                    &turn(n, now),
                    now,
                    SessionCaps::UNLIMITED
                )
                .await
                .unwrap(),
            AppendOutcome::Appended
        );
        let seen = store
            .get_session(&owner, &id)
            .await
            .unwrap()
            .expect("alive");
        assert_eq!(seen.expiry(), Some(now + chrono::Duration::seconds(1)));
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        all_messages(store, &owner, &id).await.len(),
        6,
        "1.8 s after creation, 0.6 s after its last turn, the session and its history are there"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(store.get_session(&owner, &id).await.unwrap(), None);
    assert!(all_messages(store, &owner, &id).await.is_empty());
}

/// `expires_at` ends a session when it comes, whatever its turns, and caps the idle expiry.
async fn check_expires_at_ends_a_session_in_use(store: &dyn Store) {
    let (owner, id) = (uid("owner"), uid("session"));
    let end = Utc::now() + chrono::Duration::milliseconds(1200);
    let s = SessionRecord {
        expires_at: Some(end),
        ..expiring(&owner, &id, 3600)
    };
    assert!(created(store, &s, &[]).await);
    let seen = store.get_session(&owner, &id).await.unwrap().expect("live");
    assert_eq!(seen.expires_at, Some(end), "stored as given");
    assert_eq!(seen.expiry(), Some(end), "the earlier of the two ends");
    tokio::time::sleep(Duration::from_millis(500)).await;
    acquire(store, &owner, &id, "a", LEASE).await;
    let now = Utc::now();
    store
        .append_turn(
            &owner,
            &id,
            fence("a"),
            &turn(1, now),
            now,
            SessionCaps::UNLIMITED,
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .get_session(&owner, &id)
            .await
            .unwrap()
            .and_then(|s| s.expiry()),
        Some(end),
        "a turn does not move expiresAt"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(store.get_session(&owner, &id).await.unwrap(), None);
    assert!(all_sessions(store, &owner).await.is_empty());
    assert_eq!(
        lock_outcome(store, &owner, &id, "b").await,
        LockOutcome::NoSession
    );
}

/// A recorded result kept longer than its session goes with the session.
async fn check_recorded_results_expire_with_their_session(store: &dyn Store) {
    let (owner, id) = (uid("owner"), uid("session"));
    let s = expiring(&owner, &id, 1);
    assert!(created(store, &s, &[]).await);
    acquire(store, &owner, &id, "a", LEASE).await;
    let now = Utc::now();
    store
        .append_turn_recording(
            &owner,
            &id,
            fence("a"),
            &turn(1, now),
            now,
            recorded("kept-an-hour", RESULT_BODY, Duration::from_secs(3600)),
            SessionCaps::UNLIMITED,
        )
        .await
        .unwrap();
    assert!(
        store
            .recorded_result(&owner, &id, "kept-an-hour")
            .await
            .unwrap()
            .is_some()
    );
    tokio::time::sleep(Duration::from_millis(1400)).await;
    assert_eq!(
        store
            .recorded_result(&owner, &id, "kept-an-hour")
            .await
            .unwrap(),
        None
    );
    // Nor does a new session under the id inherit it.
    assert!(created(store, &expiring(&owner, &id, 0), &[]).await);
    assert_eq!(
        store
            .recorded_result(&owner, &id, "kept-an-hour")
            .await
            .unwrap(),
        None
    );
}

/// The background sweep drops what expired and never a live session or its history.
async fn check_sweep_keeps_live_sessions(store: &dyn Store) {
    let owner = uid("owner");
    let (gone, kept, forever) = (uid("gone"), uid("kept"), uid("forever"));
    assert!(created(store, &expiring(&owner, &gone, 1), &turn(0, Utc::now())).await);
    assert!(created(store, &expiring(&owner, &kept, 3600), &turn(1, Utc::now())).await);
    assert!(created(store, &expiring(&owner, &forever, 0), &turn(2, Utc::now())).await);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    for _ in 0..3 {
        store.sweep_expired_sessions(10_000).await.expect("sweep");
    }
    let mut listed = ids(&all_sessions(store, &owner).await);
    listed.sort();
    let mut want = vec![kept.clone(), forever.clone()];
    want.sort();
    assert_eq!(listed, want);
    assert_eq!(store.get_session(&owner, &gone).await.unwrap(), None);
    assert_eq!(
        contents(&all_messages(store, &owner, &kept).await),
        vec!["question 1", "answer 1"]
    );
    assert_eq!(all_messages(store, &owner, &forever).await.len(), 2);
}

// ---------------------------------------------------------------- Redis Cluster

/// The whole suite against a real Redis Cluster (three primaries, each with a replica): every
/// script and pipeline of the store must touch one hash slot, or the cluster refuses it
/// (CROSSSLOT), and every multi-slot write must be ordered as the layout says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_passes_every_check() {
    let cluster = support::redis_topologies::RedisCluster::start(3, 1);
    let store = RedisStore::connect(&RedisConfig {
        topology: RedisTopology::Cluster {
            seeds: cluster.seeds().split(',').map(str::to_string).collect(),
        },
        ..RedisConfig::standalone("", Duration::from_secs(2))
    })
    .await
    .expect("connect to the test cluster");
    every_check(&store).await;
    drop(store);
    drop(cluster);
}

// ---------------------------------------------------------------- embedded only

/// State written to a file survives closing and reopening it; turn locks,
/// which live in memory, do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_file_reopen_keeps_state() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("nested/dirs/store.redb");
    let k = key(at(0));
    let (owner, id) = (k.id.clone(), uid("session"));
    let s = session(&owner, &id, at(1));
    let mut history = turn(0, at(1));
    {
        let store = EmbeddedStore::open(&path).expect("create the store file");
        store.insert_key(&k).await.unwrap();
        assert!(created(&store, &s, &history).await);
        acquire(&store, &owner, &id, "a", LEASE).await;
        assert_eq!(
            store
                .append_turn(
                    &owner,
                    &id,
                    fence("a"),
                    &turn(1, at(2)),
                    at(2),
                    SessionCaps::UNLIMITED
                )
                .await
                .unwrap(),
            AppendOutcome::Appended
        );
        // Left locked on purpose: a restart must not keep the lock.
        acquire(&store, &owner, &id, "b", LEASE).await;
        assert!(
            EmbeddedStore::open(&path).is_err(),
            "a second open of a file in use must fail, not share it"
        );
    }
    history.extend(turn(1, at(2)));

    let store = EmbeddedStore::open(&path).expect("reopen the store file");
    store.ping().await.unwrap();
    assert_eq!(store.key_by_id(&k.id).await.unwrap(), Some(k.clone()));
    assert_eq!(
        store.key_by_hash(&k.secret_hash).await.unwrap(),
        Some(k.clone())
    );
    assert!(store.list_keys().await.unwrap().contains(&k));
    let mut expected = counted(&s, 4);
    expected.updated_at = at(2);
    assert_eq!(
        store.get_session(&owner, &id).await.unwrap(),
        Some(expected.clone())
    );
    assert_eq!(all_messages(&store, &owner, &id).await, history);
    assert_eq!(all_sessions(&store, &owner).await, vec![expected]);
    let (_, seen) = acquire(&store, &owner, &id, "c", LEASE).await;
    assert_eq!(seen, history);
    drop(store);

    // And it opens again after that.
    let store = EmbeddedStore::open(&path).expect("reopen the store file again");
    assert_eq!(all_messages(&store, &owner, &id).await, history);
}

/// Opening a path whose parent is a file is an error, not a panic.
#[tokio::test]
async fn embedded_open_reports_bad_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"not a directory").unwrap();
    assert!(EmbeddedStore::open(&file.join("store.redb")).is_err());
    assert!(
        EmbeddedStore::open(&file).is_err(),
        "a file that is not a redb database must be refused"
    );
}

/// The sweep deletes each expired session once, and only expired ones: its count is what it
/// found due, so a second sweep finds nothing, and a session still alive is not touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_sweep_deletes_each_expired_session_once() {
    let store = EmbeddedStore::open_temporary().expect("store");
    let owner = uid("owner");
    for n in 0..3 {
        let id = format!("short-{n}");
        assert!(created(&store, &expiring(&owner, &id, 1), &turn(n, Utc::now())).await);
    }
    assert!(created(&store, &expiring(&owner, "long", 3600), &[]).await);
    assert_eq!(store.sweep_expired_sessions(100).await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        store.sweep_expired_sessions(2).await.unwrap(),
        2,
        "a sweep takes at most its budget"
    );
    assert_eq!(store.sweep_expired_sessions(100).await.unwrap(), 1);
    assert_eq!(store.sweep_expired_sessions(100).await.unwrap(), 0);
    assert_eq!(ids(&all_sessions(&store, &owner).await), vec!["long"]);
}

/// A session that expired stops counting against `maxSessions` at once, before any sweep.
async fn check_an_expired_session_frees_its_quota_slot(store: &dyn Store) {
    let owner = uid("owner");
    let caps = SessionCaps {
        max_sessions: 1,
        ..SessionCaps::UNLIMITED
    };
    let first = expiring(&owner, &uid("session"), 1);
    assert!(
        store
            .create_session(&first, &[], caps)
            .await
            .unwrap()
            .created()
    );
    let second = expiring(&owner, &uid("session"), 3600);
    assert!(
        matches!(
            store.create_session(&second, &[], caps).await.unwrap(),
            CreateOutcome::OverQuota(_)
        ),
        "the one slot is taken while the first session lives"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        store
            .create_session(&second, &[], caps)
            .await
            .unwrap()
            .created(),
        "the expired session's slot is free"
    );
    assert_eq!(
        all_sessions(store, &owner).await.len(),
        1,
        "only the live session is listed"
    );
}

/// Creates a session with no quota in the way; whether it was created.
async fn created(store: &dyn Store, session: &SessionRecord, messages: &[StoredMessage]) -> bool {
    store
        .create_session(session, messages, SessionCaps::UNLIMITED)
        .await
        .unwrap()
        .created()
}

/// A compaction summary's content counts in the session's bytes like any message: the turn
/// after it is held to `maxSessionBytes` with the summary included.
async fn check_a_summary_counts_in_the_session_bytes(store: &dyn Store) {
    let (owner, id) = (uid("owner"), uid("session"));
    // "question 0" + "answer 0": 18 bytes.
    assert!(created(store, &session(&owner, &id, at(0)), &turn(0, at(0))).await);
    acquire(store, &owner, &id, "a", LEASE).await;
    // A turn of 18 bytes more fits 36 bytes...
    assert_eq!(
        store
            .append_turn(
                &owner,
                &id,
                fence("a"),
                &turn(1, at(1)),
                at(1),
                caps(10, 100, 36)
            )
            .await
            .unwrap(),
        AppendOutcome::Appended
    );
    acquire(store, &owner, &id, "b", LEASE).await;
    let mut summary = msg("system", "0123456789", at(2));
    summary.summary = Some(SummaryOf { from: 0, to: 4 });
    assert_eq!(
        store
            .append_summary(&owner, &id, fence("b"), &summary)
            .await
            .unwrap(),
        AppendOutcome::Appended
    );
    // ... and with the summary's 10 bytes the session holds 46: 18 more do not fit 60.
    assert_eq!(
        store
            .append_turn(
                &owner,
                &id,
                fence("b"),
                &turn(2, at(3)),
                at(3),
                caps(10, 100, 60)
            )
            .await
            .unwrap(),
        AppendOutcome::OverQuota(CapBreach {
            cap: SessionCap::Bytes,
            limit: 60,
            used: 46
        })
    );
}
