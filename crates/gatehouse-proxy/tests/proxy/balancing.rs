//! Which backend gets a request.

use std::time::Duration;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_alternates_exactly_over_20_requests() {
    let a = Nginx::start("a");
    let b = Nginx::start("b");
    let proxy = Proxy::start(&http_service(&[a.addr(), b.addr()], "")).await;
    let mut client = Client::connect(proxy.addr).await;
    let mut bodies = Vec::new();
    for _ in 0..20 {
        let answer = client.get("/").await.expect("answer");
        assert_eq!(answer.status, 200);
        bodies.push(answer.body.trim().to_owned());
    }
    let first = bodies[0].clone();
    for (i, body) in bodies.iter().enumerate() {
        let expected = if (i % 2 == 0) == (first == "a") { "a" } else { "b" };
        assert_eq!(body, expected, "request {i}: {bodies:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_avoids_the_backend_with_a_slow_request_in_flight() {
    let one = slow_backend("one", Duration::from_secs(2)).await;
    let two = slow_backend("two", Duration::from_secs(2)).await;
    let proxy = Proxy::start(&http_service(&[one, two], "balance = \"least-conn\"")).await;
    let addr = proxy.addr;
    let slow = tokio::spawn(async move { get(addr, "/slow").await.body });
    // The slow request is in flight on one of them.
    let backends = proxy.pool.backends();
    wait_for(Duration::from_secs(2), "slow request in flight", || {
        backends.iter().any(|b| b.stats.connections.get() == 1)
    })
    .await;
    let busy = if backends[0].stats.connections.get() == 1 {
        "one"
    } else {
        "two"
    };
    let mut client = Client::connect(proxy.addr).await;
    for _ in 0..6 {
        let body = client.get("/").await.expect("answer").body;
        assert_ne!(
            body.trim(),
            busy,
            "a request went to the backend with a slow request in flight"
        );
    }
    assert_eq!(slow.await.expect("slow request").trim(), busy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_keeps_a_client_on_its_backend_until_that_backend_is_down() {
    let mut one = Nginx::start("one");
    let mut two = Nginx::start("two");
    let text = format!(
        "[[service]]\nname = \"shop-web\"\nlisten = \"127.0.0.1:{}\"\nmode = \"http\"\nbalance = \"cookie\"\n\
         backends = [{{ addr = \"{}\", name = \"one\" }}, {{ addr = \"{}\", name = \"two\" }}]\n\
         health = {{ fall = 1 }}\n",
        free_port(),
        one.addr(),
        two.addr()
    );
    let proxy = Proxy::start(&service(&text)).await;
    let mut client = Client::connect(proxy.addr).await;

    let first = client.get("/").await.expect("answer");
    let backend = first.body.trim().to_owned();
    let set_cookie = first
        .headers
        .get("set-cookie")
        .expect("a Set-Cookie")
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        set_cookie,
        format!("gh_shop_web={backend}; Path=/; HttpOnly; SameSite=Lax")
    );

    let with_cookie = |cookie: &str| {
        hyper::Request::get("/")
            .header("host", "shop.example")
            .header("cookie", format!("lang=en; gh_shop_web={cookie}"))
            .body(http_body_util::Full::default())
            .unwrap()
    };
    for _ in 0..10 {
        let answer = client.send(with_cookie(&backend)).await.expect("answer");
        assert_eq!(answer.body.trim(), backend, "the cookie did not stick");
        assert!(
            answer.headers.get("set-cookie").is_none(),
            "a sticky client got a new cookie"
        );
    }

    // Its backend dies: the client moves, and gets a cookie for its new one.
    let (dead, other) = if backend == "one" {
        (&mut one, "two")
    } else {
        (&mut two, "one")
    };
    dead.kill();
    let moved = client.send(with_cookie(&backend)).await.expect("answer");
    assert_eq!(moved.status, 200);
    assert_eq!(moved.body.trim(), other);
    let cookie = moved
        .headers
        .get("set-cookie")
        .expect("a new cookie")
        .to_str()
        .unwrap();
    assert!(cookie.starts_with(&format!("gh_shop_web={other};")), "{cookie}");
    assert!(
        !proxy
            .pool
            .backends()
            .iter()
            .find(|b| b.label == backend)
            .unwrap()
            .is_up()
    );
}
