//! Files and long documents: uploads through `/v1/files`, `fileid://` in system messages for a
//! `dashscope` upstream (uploaded there once, the reference rewritten) and for an OpenAI-
//! compatible one (the text put into the system message), ownership, deletion and limits. The
//! documents are made here: a DOCX as zip + XML, a PDF written with `lopdf`, plain text.

mod common;

use std::io::Write;

use common::*;
use serde_json::{Value, json};

const OTHER_KEY: &str = "sk-other-test";

async fn env() -> (Sim, Gateway) {
    let sim = Sim::start().await;
    let extra = format!(
        r#"
[files]
max_file_bytes = 200000
max_inline_tokens = 2000
max_extract_bytes = 100000
max_pdf_pages = 3

[[keys]]
name = "other"
key = "{OTHER_KEY}"

[[upstreams]]
name = "plain"
provider = "openai"
base_url = "{{SIM}}/v1"
api_key = "{UPSTREAM_KEY}"
models = ["local-long"]
"#
    );
    let toml = config_for(&sim, "", &extra).replace(
        "models = [\"qwen-plus\", \"qwen-vl-plus\", \"qwen-max\"]",
        "models = [\"qwen-plus\", \"qwen-long\"]",
    );
    let gw = Gateway::start(&toml).await;
    (sim, gw)
}

fn docx(paragraphs: &[&str]) -> Vec<u8> {
    let body: String = paragraphs
        .iter()
        .map(|p| format!("<w:p><w:r><w:t>{p}</w:t></w:r></w:p>"))
        .collect();
    let document = format!(
        r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>{body}</w:body></w:document>"#
    );
    let mut out = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut out);
    let options = zip::write::SimpleFileOptions::default();
    let files = [
        ("[Content_Types].xml", r#"<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="xml" ContentType="application/xml"/><Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>"#.to_string()),
        ("word/document.xml", document),
    ];
    for (name, text) in files {
        zip.start_file(name, options)
            .unwrap_or_else(|e| panic!("{e}"));
        zip.write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
    }
    zip.finish().unwrap_or_else(|e| panic!("{e}"));
    out.into_inner()
}

fn pdf(text: &str) -> Vec<u8> {
    pdf_of(&[text])
}

/// A PDF with one page per text.
fn pdf_of(texts: &[&str]) -> Vec<u8> {
    use lopdf::content::{Content, Operation};
    use lopdf::{Document, Object, Stream, dictionary};
    let mut doc = Document::with_version("1.5");
    let pages_id = doc.new_object_id();
    let font_id = doc.add_object(dictionary! {
        "Type" => "Font", "Subtype" => "Type1", "BaseFont" => "Courier",
    });
    let resources_id = doc.add_object(dictionary! {
        "Font" => dictionary! { "F1" => font_id },
    });
    let mut kids: Vec<Object> = Vec::new();
    for text in texts {
        let content = Content {
            operations: vec![
                Operation::new("BT", vec![]),
                Operation::new("Tf", vec!["F1".into(), 24.into()]),
                Operation::new("Td", vec![100.into(), 600.into()]),
                Operation::new("Tj", vec![Object::string_literal(*text)]),
                Operation::new("ET", vec![]),
            ],
        };
        let encoded = content.encode().unwrap_or_else(|e| panic!("{e}"));
        let content_id = doc.add_object(Stream::new(dictionary! {}, encoded));
        let page_id = doc.add_object(dictionary! {
            "Type" => "Page", "Parent" => pages_id, "Contents" => content_id,
        });
        kids.push(page_id.into());
    }
    let count = i64::try_from(kids.len()).unwrap_or(i64::MAX);
    doc.objects.insert(
        pages_id,
        Object::Dictionary(dictionary! {
            "Type" => "Pages", "Kids" => kids, "Count" => count,
            "Resources" => resources_id, "MediaBox" => vec![0.into(), 0.into(), 595.into(), 842.into()],
        }),
    );
    let catalog_id = doc.add_object(dictionary! { "Type" => "Catalog", "Pages" => pages_id });
    doc.trailer.set("Root", catalog_id);
    let mut out = Vec::new();
    doc.save_to(&mut out).unwrap_or_else(|e| panic!("{e}"));
    out
}

async fn upload(
    gw: &Gateway,
    key: &str,
    name: &str,
    bytes: Vec<u8>,
    purpose: &str,
) -> reqwest::Response {
    let form = reqwest::multipart::Form::new()
        .text("purpose", purpose.to_string())
        .part(
            "file",
            reqwest::multipart::Part::bytes(bytes).file_name(name.to_string()),
        );
    gw.http
        .post(gw.url("/compatible-mode/v1/files"))
        .bearer_auth(key)
        .multipart(form)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn uploaded(gw: &Gateway, name: &str, bytes: Vec<u8>) -> String {
    let response = upload(gw, CLIENT_KEY, name, bytes, "file-extract").await;
    assert_eq!(response.status(), 200);
    let file = json_of(response).await;
    assert_eq!(file["object"], "file");
    assert_eq!(file["status"], "processed");
    assert_eq!(file["filename"], name);
    let id = file["id"].as_str().unwrap_or_default().to_string();
    assert!(id.starts_with("file-fe-"), "{file}");
    id
}

fn with_files(model: &str, systems: &[&str], question: &str) -> Value {
    let mut messages = vec![json!({"role": "system", "content": "You are a helpful assistant."})];
    messages.extend(
        systems
            .iter()
            .map(|s| json!({"role": "system", "content": s})),
    );
    messages.push(json!({"role": "user", "content": question}));
    json!({"model": model, "messages": messages})
}

async fn answer(gw: &Gateway, key: &str, body: &Value) -> (u16, Value) {
    let response = gw
        .http
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let status = response.status().as_u16();
    (status, json_of(response).await)
}

fn content(reply: &Value) -> String {
    reply["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn sim_files(sim: &Sim) -> Vec<Value> {
    let list: Value = reqwest::Client::new()
        .get(format!("{}/compatible-mode/v1/files", sim.url()))
        .bearer_auth(UPSTREAM_KEY)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json()
        .await
        .unwrap_or_default();
    list["data"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn a_dashscope_upstream_gets_the_file_once_and_reads_it() {
    let (sim, gw) = env().await;
    let doc = uploaded(
        &gw,
        "phones.docx",
        docx(&["Bailian phones", "The X1 has 12 GB."]),
    )
    .await;
    let notes = uploaded(&gw, "notes.txt", b"Battery lasts two days.".to_vec()).await;
    let text = uploaded(&gw, "spec.md", b"# Spec\nScreen 6.7 inch".to_vec()).await;
    // One file; two in one message; another in a later message.
    let body = with_files(
        "qwen-long",
        &[
            &format!("fileid://{doc}"),
            &format!("fileid://{notes},fileid://{text}"),
        ],
        "What is this about?",
    );
    let (status, reply) = answer(&gw, CLIENT_KEY, &body).await;
    assert_eq!(status, 200, "{reply}");
    let said = content(&reply);
    assert!(
        said.contains("phones.docx: Bailian phones The X1 has 12 GB."),
        "{said}"
    );
    assert!(
        said.contains("notes.txt: Battery lasts two days."),
        "{said}"
    );
    assert!(said.contains("spec.md: # Spec Screen 6.7 inch"), "{said}");
    // The upstream knows the files by its own ids, not the gateway's.
    assert!(!said.contains(&doc), "{said}");
    assert_eq!(sim_files(&sim).await.len(), 3);
    // Asked again: no second upload.
    let (status, _) = answer(&gw, CLIENT_KEY, &body).await;
    assert_eq!(status, 200);
    assert_eq!(sim_files(&sim).await.len(), 3);

    // The native dialect names files the same way.
    let native = gw
        .http
        .post(gw.url("/api/v1/services/aigc/text-generation/generation"))
        .bearer_auth(CLIENT_KEY)
        .json(&json!({"model": "qwen-long", "input": {"messages": [
            {"role": "system", "content": format!("fileid://{doc}")},
            {"role": "user", "content": "and now?"}
        ]}, "parameters": {"result_format": "message"}}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(native.status(), 200);
    let native = json_of(native).await;
    let said = native["output"]["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or("");
    assert!(said.contains("phones.docx: Bailian phones"), "{native}");
}

#[tokio::test]
async fn an_upstream_without_files_gets_the_text_in_the_system_message() {
    let (_sim, gw) = env().await;
    let report = uploaded(&gw, "report.pdf", pdf("Quarterly revenue grew")).await;
    let doc = uploaded(&gw, "memo.docx", docx(&["Memo: ship on Friday"])).await;
    let page = uploaded(
        &gw,
        "page.html",
        b"<html><body><h1>Launch</h1><p>Tokyo &amp; Paris</p></body></html>".to_vec(),
    )
    .await;
    let mut body = with_files(
        "local-long",
        &[
            &format!("fileid://{report},fileid://{doc}"),
            &format!("fileid://{page}"),
        ],
        "Summarise",
    );
    body["sim"] = json!({"echo_request": true});
    let (status, reply) = answer(&gw, CLIENT_KEY, &body).await;
    assert_eq!(status, 200, "{reply}");
    let seen: Value = serde_json::from_str(&content(&reply)).unwrap_or_default();
    let first = seen["messages"][1]["content"].as_str().unwrap_or("");
    assert!(first.contains("<document name=\"report.pdf\">"), "{first}");
    assert!(first.contains("Quarterly revenue grew"), "{first}");
    assert!(first.contains("Memo: ship on Friday"), "{first}");
    let second = seen["messages"][2]["content"].as_str().unwrap_or("");
    assert!(
        second.contains("Launch") && second.contains("Tokyo & Paris"),
        "{second}"
    );
    assert!(!seen.to_string().contains("fileid://"), "{seen}");
    // The role-play system message is untouched.
    assert_eq!(
        seen["messages"][0]["content"],
        "You are a helpful assistant."
    );

    // Over the inline budget: a 400 that names the message.
    let long = uploaded(&gw, "long.txt", "word ".repeat(3000).into_bytes()).await;
    let (status, reply) = answer(
        &gw,
        CLIENT_KEY,
        &with_files("local-long", &[&format!("fileid://{long}")], "?"),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(error_of(&reply).1, Some("messages[1].content"), "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("max_inline_tokens")
    );
}

#[tokio::test]
async fn a_key_sees_only_its_own_files_and_deleted_ones_are_gone() {
    let (sim, gw) = env().await;
    let id = uploaded(&gw, "mine.txt", b"private notes".to_vec()).await;
    let theirs = upload(
        &gw,
        OTHER_KEY,
        "theirs.txt",
        b"other notes".to_vec(),
        "file-extract",
    )
    .await;
    assert_eq!(theirs.status(), 200);

    let get = |key: &'static str, path: String| gw.http.get(gw.url(&path)).bearer_auth(key).send();
    let listed = json_of(
        get(CLIENT_KEY, "/v1/files".into())
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    let names: Vec<&str> = listed["data"]
        .as_array()
        .map(|d| d.iter().filter_map(|f| f["filename"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["mine.txt"]);
    assert_eq!(listed["object"], "list");
    let bytes = get(CLIENT_KEY, format!("/v1/files/{id}/content"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        bytes.bytes().await.ok().as_deref(),
        Some(&b"private notes"[..])
    );
    let one = get(CLIENT_KEY, format!("/compatible-mode/v1/files/{id}"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(json_of(one).await["bytes"], 13);

    // Another key: not found, and not usable.
    let other = get(OTHER_KEY, format!("/v1/files/{id}"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(other.status(), 404);
    assert_eq!(error_of(&json_of(other).await).0, "file_not_found");
    let other = get(OTHER_KEY, format!("/v1/files/{id}/content"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(other.status(), 404);
    let (status, reply) = answer(
        &gw,
        OTHER_KEY,
        &with_files("qwen-long", &[&format!("fileid://{id}")], "?"),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(error_of(&reply).1, Some("messages[1].content"));

    // Used once (so the upstream has a copy), then deleted: gone here and there.
    let (status, _) = answer(
        &gw,
        CLIENT_KEY,
        &with_files("qwen-long", &[&format!("fileid://{id}")], "?"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(sim_files(&sim).await.len(), 1);
    let deleted = gw
        .http
        .delete(gw.url(&format!("/v1/files/{id}")))
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        json_of(deleted).await,
        json!({"object": "file", "deleted": true, "id": id})
    );
    assert_eq!(
        get(CLIENT_KEY, format!("/v1/files/{id}"))
            .await
            .map(|r| r.status().as_u16())
            .ok(),
        Some(404)
    );
    let (status, _) = answer(
        &gw,
        CLIENT_KEY,
        &with_files("qwen-long", &[&format!("fileid://{id}")], "?"),
    )
    .await;
    assert_eq!(status, 400);
    assert!(sim_files(&sim).await.is_empty());
}

#[tokio::test]
async fn uploads_are_checked_for_purpose_type_and_size() {
    let (_sim, gw) = env().await;
    let cases: [(&str, Vec<u8>, &str, u16, &str); 7] = [
        ("a.txt", b"x".to_vec(), "fine-tune", 400, "purpose"),
        ("a.exe", b"MZ".to_vec(), "file-extract", 400, "file"),
        (
            "fake.pdf",
            b"just text".to_vec(),
            "file-extract",
            400,
            "file",
        ),
        (
            "bad.docx",
            b"%PDF-1.4".to_vec(),
            "file-extract",
            400,
            "file",
        ),
        ("empty.txt", Vec::new(), "file-extract", 400, "file"),
        ("rows.csv", b"a,b".to_vec(), "batch", 400, "file"),
        ("big.txt", vec![b'a'; 300_000], "file-extract", 413, ""),
    ];
    for (name, bytes, purpose, status, param) in cases {
        let response = upload(&gw, CLIENT_KEY, name, bytes, purpose).await;
        assert_eq!(response.status().as_u16(), status, "{name}");
        let body = json_of(response).await;
        if !param.is_empty() {
            assert_eq!(error_of(&body).1, Some(param), "{name}: {body}");
        }
    }
    let batch = upload(
        &gw,
        CLIENT_KEY,
        "jobs.jsonl",
        b"{\"custom_id\":\"1\"}\n".to_vec(),
        "batch",
    )
    .await;
    assert_eq!(batch.status(), 200);
    let id = json_of(batch).await["id"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(id.starts_with("file-batch-"), "{id}");
    // A batch file is not a document.
    let (status, _) = answer(
        &gw,
        CLIENT_KEY,
        &with_files("qwen-long", &[&format!("fileid://{id}")], "?"),
    )
    .await;
    assert_eq!(status, 400);
    let anonymous = gw
        .http
        .get(gw.url("/v1/files"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test]
async fn no_form_of_reference_reaches_another_callers_document() {
    let (sim, gw) = env().await;
    let doc = uploaded(&gw, "secret.txt", b"The launch code is 0000.".to_vec()).await;
    let mine = with_files("qwen-long", &[&format!("fileid://{doc}")], "?");
    let (status, reply) = answer(&gw, CLIENT_KEY, &mine).await;
    assert_eq!(status, 200, "{reply}");
    // The upstream's own id for the document, which another caller might learn or guess.
    let remote = sim_files(&sim).await[0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!remote.is_empty());
    let forms = [
        ("system", format!("fileid://{remote},")),
        ("system", format!(" fileid://{remote} , ")),
        ("system", format!("fileid://{remote}, x")),
        ("system", format!("FILEID://{remote}")),
        ("user", format!("fileid://{remote}")),
        ("user", format!("please read fileid://{remote}")),
        ("system", format!("fileid://{doc}")),
    ];
    let before = sim.requests();
    for (role, text) in forms {
        let body = json!({"model": "qwen-long", "messages": [
            {"role": role, "content": text},
            {"role": "user", "content": "what does it say?"}
        ]});
        let (status, reply) = answer(&gw, OTHER_KEY, &body).await;
        assert_eq!(status, 400, "{role}: {text}: {reply}");
        assert!(!reply.to_string().contains("launch code"), "{reply}");
        assert_eq!(reply["error"]["param"], "messages[0].content", "{reply}");
    }
    assert_eq!(sim.requests(), before, "nothing went upstream");
    // A list with a trailing comma is still the owner's list.
    let trailing = with_files("qwen-long", &[&format!("fileid://{doc}, ")], "?");
    let (status, reply) = answer(&gw, CLIENT_KEY, &trailing).await;
    assert_eq!(status, 200, "{reply}");
    assert!(content(&reply).contains("launch code"), "{reply}");
}

#[tokio::test]
async fn a_request_naming_too_many_files_is_refused_before_any_lookup() {
    let (sim, gw) = env().await;
    let many: Vec<String> = (0..65).map(|i| format!("fileid://file-fe-{i}")).collect();
    let body =
        json!({"model": "qwen-long", "messages": [{"role": "user", "content": many.join(" ")}]});
    let (status, reply) = answer(&gw, CLIENT_KEY, &body).await;
    assert_eq!(status, 400, "{reply}");
    assert_eq!(reply["error"]["param"], "messages", "{reply}");
    assert_eq!(sim.requests(), 0);
}

#[tokio::test]
async fn a_docx_zip_bomb_is_refused_naming_the_limit() {
    let (_sim, gw) = env().await;
    // About 1 KB of zip that inflates to 300 KB of XML, over the test's 100 KB cap.
    let bomb = docx(&["word ".repeat(60_000).as_str()]);
    assert!(bomb.len() < 20_000, "{}", bomb.len());
    let id = uploaded(&gw, "bomb.docx", bomb).await;
    for _ in 0..2 {
        let (status, reply) = answer(
            &gw,
            CLIENT_KEY,
            &with_files("local-long", &[&format!("fileid://{id}")], "?"),
        )
        .await;
        assert_eq!(status, 413, "{reply}");
        let message = reply["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains("files.max_extract_bytes"), "{reply}");
    }
}

#[tokio::test]
async fn a_pdf_over_the_page_cap_is_refused_naming_the_limit() {
    let (_sim, gw) = env().await;
    // The test's cap is 3 pages.
    let long = uploaded(&gw, "long.pdf", pdf_of(&["one", "two", "three", "four"])).await;
    let (status, reply) = answer(
        &gw,
        CLIENT_KEY,
        &with_files("local-long", &[&format!("fileid://{long}")], "?"),
    )
    .await;
    assert_eq!(status, 400, "{reply}");
    let message = reply["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("files.max_pdf_pages"), "{reply}");

    // At the cap: every page's text reaches the upstream.
    let short = uploaded(&gw, "short.pdf", pdf_of(&["Alpha", "Bravo", "Charlie"])).await;
    let mut body = with_files("local-long", &[&format!("fileid://{short}")], "?");
    body["sim"] = json!({"echo_request": true});
    let (status, reply) = answer(&gw, CLIENT_KEY, &body).await;
    assert_eq!(status, 200, "{reply}");
    let seen: Value = serde_json::from_str(&content(&reply)).unwrap_or_default();
    let text = seen["messages"][1]["content"].as_str().unwrap_or("");
    assert!(
        text.contains("Alpha") && text.contains("Bravo") && text.contains("Charlie"),
        "{seen}"
    );
}
