//! `auth:` — bearer tokens per scope on the HTTP API, and the refusal to serve a non-loopback
//! address without tokens.

mod common;

use std::process::Command;

use common::Vigil;
use reqwest::StatusCode;

const TOKENS: &str = r#"
auth:
  ingest_tokens: [ship-it]
  read_tokens: [look-only]
  admin_tokens: [root-of-trust]
"#;

async fn status(request: reqwest::RequestBuilder) -> (StatusCode, serde_json::Value) {
    let response = request.send().await.expect("request sent");
    let status = response.status();
    let body = response.json().await.unwrap_or(serde_json::Value::Null);
    (status, body)
}

#[tokio::test]
async fn each_token_grants_its_scope_and_nothing_else() -> anyhow::Result<()> {
    let vigil = Vigil::start(TOKENS).await?;
    let client = &vigil.client;
    let import = || {
        client
            .post(vigil.url("/api/v1/import"))
            .body("auth_test_total{service=\"gateway\"} 42\n")
    };
    let query = || client.get(vigil.url("/api/v1/query?query=auth_test_total"));

    // Health needs no token; everything else does.
    assert_eq!(
        status(client.get(vigil.url("/healthz"))).await.0,
        StatusCode::OK
    );
    let (code, body) = status(query()).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert_eq!(body["status"], "error");
    assert_eq!(body["errorType"], "unauthorized");
    let (code, _) = status(query().bearer_auth("not-a-token")).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);

    // A read token reads but may not write; an ingest token writes but may not read.
    let (code, body) = status(import().bearer_auth("look-only")).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["error"].as_str().unwrap_or("").contains("ingest"),
        "{body}"
    );
    let (code, body) = status(import().bearer_auth("ship-it")).await;
    assert!(code.is_success(), "{code} {body}");
    assert_eq!(
        status(query().bearer_auth("ship-it")).await.0,
        StatusCode::FORBIDDEN
    );
    let (code, body) = status(query().bearer_auth("look-only")).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["result"][0]["value"][1], "42", "{body}");

    // Basic auth carries the token as its password (Fluent Bit's es output, Grafana).
    let (code, _) = status(query().basic_auth("grafana", Some("look-only"))).await;
    assert_eq!(code, StatusCode::OK);

    // Reload and silences need the admin token; the admin token may also read.
    let reload = || client.post(vigil.url("/-/reload"));
    assert_eq!(
        status(reload().bearer_auth("look-only")).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(reload().bearer_auth("root-of-trust")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        status(query().bearer_auth("root-of-trust")).await.0,
        StatusCode::OK
    );
    Ok(())
}

fn check_config(yaml: &str) -> std::process::Output {
    let directory = tempfile::tempdir().expect("temp dir");
    let file = directory.path().join("vigil.yml");
    std::fs::write(&file, yaml).expect("config written");
    Command::new(env!("CARGO_BIN_EXE_vigil"))
        .arg("check-config")
        .arg(&file)
        .output()
        .expect("the vigil binary runs")
}

#[test]
fn a_non_loopback_address_needs_tokens_or_an_explicit_opt_out() {
    let open = "server:\n  http_listen: 0.0.0.0:17999\n";
    let output = check_config(open);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("server.http_listen"), "{stderr}");
    assert!(stderr.contains("auth"), "{stderr}");

    let otlp_open = "otlp:\n  grpc_listen: 0.0.0.0:14317\n";
    let stderr = String::from_utf8_lossy(&check_config(otlp_open).stderr).to_string();
    assert!(stderr.contains("otlp.grpc_listen"), "{stderr}");

    for allowed in [
        format!("{open}auth:\n  disabled: true\n"),
        format!("{open}auth:\n  read_tokens: secret\n"),
        "server:\n  http_listen: 127.0.0.1:17999\n".to_string(),
    ] {
        let output = check_config(&allowed);
        assert!(
            output.status.success(),
            "{allowed}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[tokio::test]
async fn otlp_exports_need_an_ingest_token_when_tokens_are_set() -> anyhow::Result<()> {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;

    let grpc_port = common::free_tcp_port();
    let http_port = common::free_tcp_port();
    let vigil = Vigil::start(&format!(
        "{TOKENS}otlp:\n  grpc_listen: 127.0.0.1:{grpc_port}\n  http_listen: 127.0.0.1:{http_port}\n"
    ))
    .await?;
    // An empty export is valid OTLP: it tests the door, not the data.
    let empty = ExportTraceServiceRequest::default();
    let http_url = format!("http://127.0.0.1:{http_port}/v1/traces");
    let post = || {
        vigil
            .client
            .post(&http_url)
            .header("content-type", "application/x-protobuf")
            .body(empty.encode_to_vec())
    };
    let refused = post().send().await?;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        post().bearer_auth("look-only").send().await?.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        post().bearer_auth("ship-it").send().await?.status(),
        StatusCode::OK
    );
    assert_eq!(
        post().bearer_auth("root-of-trust").send().await?.status(),
        StatusCode::OK
    );

    let mut client = TraceServiceClient::connect(format!("http://127.0.0.1:{grpc_port}")).await?;
    let status = client
        .export(empty.clone())
        .await
        .expect_err("an export without a token is refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let mut request = tonic::Request::new(empty);
    request
        .metadata_mut()
        .insert("authorization", "Bearer ship-it".parse()?);
    client.export(request).await?;
    Ok(())
}
