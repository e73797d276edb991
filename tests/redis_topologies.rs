//! The Redis topologies the gateway's tests run against (Cluster, Sentinel, TLS), checked with
//! `redis-cli` alone: each helper must hand over servers that serve, fail over and refuse
//! strangers as production ones do, or the gateway's own tests on them would prove nothing.

mod support;

use std::time::{Duration, Instant};

use support::redis_topologies::{
    RedisAuth, RedisCli, RedisCluster, SentinelGroup, TlsMaterial, TopologyOptions, start_redis_tls,
};

/// Writes `key` on its primary and waits until a replica acknowledged it, so a failover that
/// follows cannot lose it.
fn write_replicated(cli: &RedisCli, primary: u16, key: &str, value: &str) {
    let out = cli
        .run_session(primary, &[&["SET", key, value], &["WAIT", "1", "5000"]])
        .unwrap_or_else(|e| panic!("SET {key} on {primary}: {e}"));
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["OK", "1"],
        "SET then WAIT on {primary}"
    );
}

#[test]
fn a_cluster_serves_every_slot_and_a_replica_takes_over_a_killed_primary() {
    let started = Instant::now();
    let mut cluster = RedisCluster::start(3, 1);
    eprintln!("cluster of 3+3 ready in {:?}", started.elapsed());
    assert_eq!(cluster.ports().len(), 6);
    assert_eq!(cluster.seeds().split(',').count(), 6);
    assert_eq!(cluster.primaries().len(), 3);
    let seed = cluster.ports()[0];
    let cli = cluster.cli().clone();
    for i in 0..20 {
        let key = format!("greeting:{i}");
        let set = cli.run_in_cluster(seed, &["SET", &key, &format!("hello {i}")]);
        assert_eq!(set.as_deref().map(str::trim), Ok("OK"), "SET {key}");
        let got = cli.run_in_cluster(seed, &["GET", &key]);
        assert_eq!(
            got.as_deref().map(str::trim),
            Ok(format!("hello {i}").as_str())
        );
    }

    let key = "session:{alice}";
    let doomed = cluster.primary_for_key(key);
    let heirs = cluster.replicas_of(doomed);
    assert_eq!(heirs.len(), 1, "each primary has its replica");
    write_replicated(&cli, doomed, key, "survives");

    cluster.kill(doomed);
    let took = cluster.wait_for_failover(doomed, Duration::from_secs(30));
    eprintln!("cluster failover took {took:?}");

    let heir = cluster.primary_for_key(key);
    assert_eq!(
        heir, heirs[0],
        "the killed primary's replica serves its slots"
    );
    assert!(!cluster.primaries().contains(&doomed));
    assert_eq!(cluster.primaries().len(), 3);
    let survivor = cluster.live_ports()[0];
    let got = cli.run_in_cluster(survivor, &["GET", key]);
    assert_eq!(got.as_deref().map(str::trim), Ok("survives"));
}

#[test]
fn sentinels_promote_the_replica_of_a_killed_primary_and_report_it() {
    let started = Instant::now();
    let mut group = SentinelGroup::start("openclaw");
    eprintln!("sentinel group ready in {:?}", started.elapsed());
    assert_eq!(group.master_name(), "openclaw");
    assert_eq!(group.sentinels().split(',').count(), 3);
    let old = group.primary_port();
    assert_eq!(
        old,
        group.data_ports()[0],
        "the sentinels name the started primary"
    );
    write_replicated(group.cli(), old, "quota:alice", "7");

    assert_eq!(group.kill_primary(), old);
    let (new, took) = group.wait_for_promotion(Duration::from_secs(30));
    eprintln!("sentinel promotion took {took:?}");

    assert_eq!(new, group.data_ports()[1], "the replica was promoted");
    for sentinel in group.sentinel_ports() {
        let addr = group.sentinel_cli_run(
            sentinel,
            &["SENTINEL", "get-master-addr-by-name", "openclaw"],
        );
        assert_eq!(
            addr.lines().collect::<Vec<_>>(),
            ["127.0.0.1", new.to_string().as_str()],
            "sentinel {sentinel}"
        );
    }
    assert_eq!(group.redis_cli(new, &["GET", "quota:alice"]).trim(), "7");
    assert_eq!(
        group.redis_cli(new, &["SET", "quota:bob", "1"]).trim(),
        "OK"
    );
}

#[test]
fn tls_redis_admits_only_clients_that_trust_its_ca_and_show_a_certificate() {
    let started = Instant::now();
    let tls = TlsMaterial::generate();
    eprintln!("TLS material made in {:?}", started.elapsed());
    let client = Some((tls.client_cert.as_path(), tls.client_key.as_path()));
    let started = Instant::now();
    let strict = start_redis_tls(&tls, true);
    eprintln!("TLS redis ready in {:?}", started.elapsed());

    let ping =
        |cli: RedisCli, port: u16| cli.run(port, &["PING"]).map(|out| out.trim().to_string());
    assert_eq!(ping(tls.cli(), strict.port), Ok("PONG".to_string()));
    let wrong_ca = ping(RedisCli::tls(&tls.other_ca_cert, client), strict.port);
    assert!(
        wrong_ca
            .as_ref()
            .is_err_and(|e| e.contains("certificate verify failed")),
        "a client trusting another CA must not accept the server: {wrong_ca:?}"
    );
    assert!(
        ping(RedisCli::tls(&tls.ca_cert, None), strict.port).is_err(),
        "a client without a certificate must be refused"
    );
    let foreign = Some((
        tls.foreign_client_cert.as_path(),
        tls.foreign_client_key.as_path(),
    ));
    assert!(
        ping(RedisCli::tls(&tls.ca_cert, foreign), strict.port).is_err(),
        "a certificate from another CA must be refused"
    );
    assert!(
        ping(RedisCli::plain(), strict.port).is_err(),
        "plain TCP must be refused"
    );

    let lenient = start_redis_tls(&tls, false);
    assert_eq!(
        ping(RedisCli::tls(&tls.ca_cert, None), lenient.port),
        Ok("PONG".to_string()),
        "without require_client_cert, trusting the CA is enough"
    );
}

#[test]
fn a_tls_cluster_with_an_acl_user_serves_that_user_only() {
    let tls = TlsMaterial::generate();
    let options = TopologyOptions {
        auth: Some(RedisAuth::acl_user("gateway", "cluster-secret")),
        tls: Some(tls.clone()),
        require_client_cert: true,
    };
    let started = Instant::now();
    let cluster = RedisCluster::start_with(3, 1, &options);
    eprintln!(
        "TLS cluster of 3+3 with an ACL user ready in {:?}",
        started.elapsed()
    );
    let seed = cluster.ports()[0];
    let set = cluster.cli().run_in_cluster(seed, &["SET", "key:{a}", "1"]);
    assert_eq!(set.as_deref().map(str::trim), Ok("OK"));
    let got = cluster.cli().run_in_cluster(seed, &["GET", "key:{a}"]);
    assert_eq!(got.as_deref().map(str::trim), Ok("1"));

    let anonymous = tls.cli().run(seed, &["GET", "key:{a}"]);
    assert!(
        anonymous.as_ref().is_err_and(|e| e.contains("NOAUTH")),
        "{anonymous:?}"
    );
    let wrong = tls
        .cli()
        .auth(Some("gateway"), "guess")
        .run(seed, &["PING"]);
    assert!(wrong.is_err(), "{wrong:?}");
}

#[test]
fn a_password_protected_sentinel_group_over_tls_fails_over() {
    let options = TopologyOptions {
        auth: Some(RedisAuth::password("sentinel-secret")),
        tls: Some(TlsMaterial::generate()),
        require_client_cert: false,
    };
    let started = Instant::now();
    let mut group = SentinelGroup::start_with("tls-primary", &options);
    eprintln!(
        "TLS sentinel group with a password ready in {:?}",
        started.elapsed()
    );
    let old = group.primary_port();
    let unauthenticated = group.sentinel_cli().run(old, &["GET", "x"]);
    assert!(
        unauthenticated
            .as_ref()
            .is_err_and(|e| e.contains("NOAUTH")),
        "{unauthenticated:?}"
    );
    write_replicated(group.cli(), old, "x", "kept");

    group.kill_primary();
    let (new, took) = group.wait_for_promotion(Duration::from_secs(30));
    eprintln!("sentinel promotion over TLS took {took:?}");
    assert_ne!(new, old);
    assert_eq!(group.redis_cli(new, &["GET", "x"]).trim(), "kept");
}
