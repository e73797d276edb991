//! Tool calling end to end: the official OpenAI Python SDK runs a whole tool loop (whole and
//! streamed) through `/v1` against an OpenAI-compatible upstream, and every tool field reaches
//! it intact; the sessions API (REST, whole and streamed) and gRPC run the same loop and keep
//! it in the history; parallel calls are answered once every result is in; the offline
//! simulator plays the loop without credentials; and what the gateway does not serve is
//! refused, naming the field in each surface's spelling.

mod support;

use serde_json::{Value, json};
use support::{
    Behaviour, Offline, Stack, ensure_openai_sdk, expect_data, expect_error, post_with_key,
};

const MODEL: &str = "zai/glm-4.7-flash";

/// Arguments as a model writes them: odd spacing, escapes and non-ASCII text, so any
/// re-serialisation on the way shows.
const PARIS_ARGS: &str = r#"{"city": "Paris",  "unit":"celsius", "note": "naïve ☀ \"quoted\""}"#;
const OSLO_ARGS: &str = r#"{ "city" : "Oslo", "unit": "fahrenheit" }"#;

/// Runs `script` with the gateway's `/v1` base, `key` and the tools offered; its printed JSON.
async fn run_sdk(script: &str, stack: &Stack, key: &str) -> Value {
    let output = tokio::process::Command::new("python3")
        .args(["-c", script])
        .env("GATEWAY_BASE", stack.url("/v1"))
        .env("GATEWAY_KEY", key)
        .env("TOOLS", json!([weather_tool()]).to_string())
        .env("SCHEMA", weather_schema().to_string())
        .output()
        .await
        .expect("run python3");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the SDK script failed:\n{stderr}");
    serde_json::from_slice(&output.stdout).expect("the script prints JSON")
}

fn weather_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "The city's name"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}
        },
        "required": ["city", "unit"],
        "additionalProperties": false
    })
}

/// The tool as OpenAI's API spells it.
fn weather_tool() -> Value {
    json!({"type": "function", "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": weather_schema(),
        "strict": true
    }})
}

fn calls(calls: &[(&str, &str, &str)]) -> Behaviour {
    Behaviour::ToolCalls {
        calls: calls
            .iter()
            .map(|(id, name, arguments)| (id.to_string(), name.to_string(), arguments.to_string()))
            .collect(),
        prompt_tokens: 30,
        completion_tokens: 12,
    }
}

fn reply(content: &str) -> Behaviour {
    Behaviour::Reply {
        content: content.to_owned(),
        prompt_tokens: 40,
        completion_tokens: 9,
    }
}

/// An assistant message calling `get_weather` as `id`, as OpenAI's wire has it.
fn called(id: &str, arguments: &str) -> Value {
    json!({"id": id, "type": "function", "function": {"name": "get_weather", "arguments": arguments}})
}

/// The events of a server-sent event stream: (event name, data as JSON).
fn sse_events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter_map(|event| {
            let mut name = "message".to_owned();
            let mut data = String::new();
            for line in event.lines() {
                if let Some(n) = line.strip_prefix("event:") {
                    name = n.trim().to_owned();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.strip_prefix(' ').unwrap_or(d));
                }
            }
            (!data.is_empty()).then(|| {
                let value = serde_json::from_str(&data).unwrap_or(Value::String(data));
                (name, value)
            })
        })
        .collect()
}

const SDK_LOOP: &str = r#"
import json, os
from openai import OpenAI

client = OpenAI(base_url=os.environ["GATEWAY_BASE"], api_key=os.environ["GATEWAY_KEY"], max_retries=0)
tools = json.loads(os.environ["TOOLS"])
schema = json.loads(os.environ["SCHEMA"])
model = "zai/glm-4.7-flash"
out = {}

def calls_of(message):
    return [{"id": c.id, "type": c.type, "name": c.function.name, "arguments": c.function.arguments}
            for c in (message.tool_calls or [])]

# Whole: the model calls the tool, the client runs it and sends the result back.
messages = [
    {"role": "system", "content": "Use the tools."},
    {"role": "user", "content": "What is the weather in Paris?", "name": "alice"},
]
first = client.chat.completions.create(
    model=model, messages=messages, tools=tools, tool_choice="auto", parallel_tool_calls=False)
choice = first.choices[0]
out["first"] = {"finish": choice.finish_reason, "role": choice.message.role,
                "content": choice.message.content, "calls": calls_of(choice.message)}
call = choice.message.tool_calls[0]
messages.append({"role": "assistant", "content": None, "tool_calls": [
    {"id": call.id, "type": "function",
     "function": {"name": call.function.name, "arguments": call.function.arguments}}]})
messages.append({"role": "tool", "tool_call_id": call.id, "content": "18 C, sunny"})
second = client.chat.completions.create(model=model, messages=messages, tools=tools)
out["second"] = {"finish": second.choices[0].finish_reason,
                 "content": second.choices[0].message.content,
                 "calls": calls_of(second.choices[0].message)}

# Streamed: the call is assembled from its pieces.
messages = [{"role": "user", "content": "And in Oslo?"}]
stream = client.chat.completions.create(
    model=model, messages=messages, tools=tools,
    tool_choice={"type": "function", "function": {"name": "get_weather"}},
    stream=True, stream_options={"include_usage": True})
assembled, finish, usage, text, ids = {}, None, None, "", set()
for chunk in stream:
    ids.add(chunk.id)
    if chunk.usage is not None:
        usage = chunk.usage.model_dump(exclude_none=True)
    for c in chunk.choices:
        if c.finish_reason:
            finish = c.finish_reason
        if c.delta.content:
            text += c.delta.content
        for piece in c.delta.tool_calls or []:
            call = assembled.setdefault(piece.index, {"id": None, "type": None, "name": None,
                                                      "arguments": "", "pieces": 0})
            if piece.id:
                call["id"] = piece.id
            if piece.type:
                call["type"] = piece.type
            if piece.function is not None and piece.function.name:
                call["name"] = piece.function.name
            if piece.function is not None and piece.function.arguments:
                call["arguments"] += piece.function.arguments
                call["pieces"] += 1
out["streamed"] = {"calls": [assembled[i] for i in sorted(assembled)], "finish": finish,
                   "usage": usage, "text": text, "ids": len(ids)}
call = assembled[0]
messages.append({"role": "assistant", "content": None, "tool_calls": [
    {"id": call["id"], "type": "function",
     "function": {"name": call["name"], "arguments": call["arguments"]}}]})
messages.append({"role": "tool", "tool_call_id": call["id"], "content": "64 F, snow"})
answer, finish = "", None
for chunk in client.chat.completions.create(model=model, messages=messages, tools=tools, stream=True):
    for c in chunk.choices:
        if c.delta.content:
            answer += c.delta.content
        if c.finish_reason:
            finish = c.finish_reason
out["streamed_answer"] = {"content": answer, "finish": finish}

# Structured output.
formatted = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Paris, as JSON"}],
    response_format={"type": "json_schema", "json_schema": {
        "name": "weather", "description": "A forecast", "schema": schema, "strict": True}})
out["json"] = json.loads(formatted.choices[0].message.content)

print(json.dumps(out))
"#;

#[tokio::test]
async fn the_official_openai_python_sdk_runs_a_tool_loop_whole_and_streamed() {
    ensure_openai_sdk().await;
    let stack = Stack::embedded().await;
    let key = stack.create_key("sdk-tools").await;
    stack.upstream.then([
        calls(&[("call_w1", "get_weather", PARIS_ARGS)]),
        reply("It is 18 C and sunny in Paris."),
        calls(&[("call_w2", "get_weather", OSLO_ARGS)]),
        reply("It is 64 F and snowing in Oslo."),
        reply(r#"{"city":"Paris","unit":"celsius"}"#),
    ]);
    let out = run_sdk(SDK_LOOP, &stack, &key).await;

    // What the SDK read.
    assert_eq!(
        out["first"],
        json!({"finish": "tool_calls", "role": "assistant", "content": null, "calls": [
            {"id": "call_w1", "type": "function", "name": "get_weather", "arguments": PARIS_ARGS}]}),
        "{out}"
    );
    assert_eq!(
        out["second"],
        json!({"finish": "stop", "content": "It is 18 C and sunny in Paris.", "calls": []}),
        "{out}"
    );
    let streamed = &out["streamed"];
    assert_eq!(streamed["finish"], "tool_calls", "{out}");
    assert_eq!(streamed["text"], "", "no text beside the call: {out}");
    assert_eq!(streamed["ids"], 1, "one id for every chunk: {out}");
    assert_eq!(
        streamed["usage"],
        json!({"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42}),
        "{out}"
    );
    let call = &streamed["calls"];
    assert_eq!(call.as_array().unwrap().len(), 1, "{out}");
    assert_eq!(call[0]["id"], "call_w2", "{out}");
    assert_eq!(call[0]["type"], "function", "{out}");
    assert_eq!(call[0]["name"], "get_weather", "{out}");
    assert_eq!(call[0]["arguments"], OSLO_ARGS, "{out}");
    assert!(
        call[0]["pieces"].as_u64().unwrap() >= 2,
        "the arguments came in pieces: {out}"
    );
    assert_eq!(
        out["streamed_answer"],
        json!({"content": "It is 64 F and snowing in Oslo.", "finish": "stop"}),
        "{out}"
    );
    assert_eq!(
        out["json"],
        json!({"city": "Paris", "unit": "celsius"}),
        "{out}"
    );

    // What the model heard: every field intact.
    let received = stack.upstream.received();
    assert_eq!(received.len(), 5, "{received:#?}");
    let first = &received[0];
    assert_eq!(first["model"], "glm-4.7-flash");
    assert_eq!(first["tools"], json!([weather_tool()]), "{first}");
    assert_eq!(first["tool_choice"], "auto", "{first}");
    assert_eq!(first["parallel_tool_calls"], false, "{first}");
    assert_eq!(
        first["messages"],
        json!([
            {"role": "system", "content": "Use the tools."},
            {"role": "user", "content": "What is the weather in Paris?", "name": "alice"},
        ]),
        "{first}"
    );

    let second = &received[1];
    assert_eq!(second["tools"], json!([weather_tool()]), "{second}");
    assert!(second.get("tool_choice").is_none(), "not asked: {second}");
    assert!(second.get("parallel_tool_calls").is_none(), "{second}");
    let messages = second["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 4, "{second}");
    assert_eq!(
        messages[2],
        json!({"role": "assistant", "content": null, "tool_calls": [called("call_w1", PARIS_ARGS)]}),
        "{second}"
    );
    assert_eq!(
        messages[2]["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap()
            .as_bytes(),
        PARIS_ARGS.as_bytes(),
        "the arguments byte for byte"
    );
    assert_eq!(
        messages[3],
        json!({"role": "tool", "content": "18 C, sunny", "tool_call_id": "call_w1"}),
        "{second}"
    );

    let third = &received[2];
    assert_eq!(third["stream"], true, "{third}");
    assert_eq!(
        third["tool_choice"],
        json!({"type": "function", "function": {"name": "get_weather"}}),
        "{third}"
    );
    assert_eq!(third["tools"], json!([weather_tool()]), "{third}");

    let fourth = &received[3];
    assert_eq!(fourth["stream"], true, "{fourth}");
    assert_eq!(
        fourth["messages"],
        json!([
            {"role": "user", "content": "And in Oslo?"},
            {"role": "assistant", "content": null, "tool_calls": [called("call_w2", OSLO_ARGS)]},
            {"role": "tool", "content": "64 F, snow", "tool_call_id": "call_w2"},
        ]),
        "{fourth}"
    );

    let fifth = &received[4];
    assert_eq!(
        fifth["response_format"],
        json!({"type": "json_schema", "json_schema": {
            "name": "weather", "description": "A forecast", "schema": weather_schema(), "strict": true}}),
        "{fifth}"
    );
    assert!(fifth.get("tools").is_none(), "{fifth}");
}

/// The loop as OpenAI's documentation writes it: the reply's message object is appended to the
/// conversation as it is. The SDK sends it back with every field it had, `refusal: null`
/// included, which OpenAI's API accepts on an assistant message.
const SDK_APPENDS_THE_MESSAGE: &str = r#"
import json, os
import openai
from openai import OpenAI

client = OpenAI(base_url=os.environ["GATEWAY_BASE"], api_key=os.environ["GATEWAY_KEY"], max_retries=0)
tools = json.loads(os.environ["TOOLS"])
messages = [{"role": "user", "content": "What is the weather in Paris?"}]
first = client.chat.completions.create(model="zai/glm-4.7-flash", messages=messages, tools=tools)
message = first.choices[0].message
messages.append(message)
for call in message.tool_calls:
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "18 C"})
out = {}
try:
    second = client.chat.completions.create(model="zai/glm-4.7-flash", messages=messages, tools=tools)
    out["answer"] = second.choices[0].message.content
except openai.BadRequestError as e:
    out["error"] = {"status": e.status_code, "param": e.param, "message": e.message}
print(json.dumps(out))
"#;

#[tokio::test]
async fn the_sdk_may_append_the_replys_message_object_as_it_is() {
    ensure_openai_sdk().await;
    let stack = Stack::embedded().await;
    let key = stack.create_key("sdk-append").await;
    stack.upstream.then([
        calls(&[("call_a1", "get_weather", PARIS_ARGS)]),
        reply("18 C in Paris."),
    ]);
    let out = run_sdk(SDK_APPENDS_THE_MESSAGE, &stack, &key).await;
    assert_eq!(out, json!({"answer": "18 C in Paris."}));
    let received = stack.upstream.received();
    assert_eq!(received.len(), 2, "{received:#?}");
    assert_eq!(
        received[1]["messages"][1],
        json!({"role": "assistant", "content": null, "tool_calls": [called("call_a1", PARIS_ARGS)]})
    );
}

// ---------------------------------------------------------------- the sessions API

/// How a tool result is handed to a session.
#[derive(Clone, Copy, Debug)]
enum Deliver {
    /// `POST /api/v1/sessions/{id}/messages` with `{"message": {...}}`: the documented way.
    Send,
    /// The same send with `"stream": true`: server-sent events.
    Stream,
    /// `POST /api/v1/sessions` with `context.sessionId` and `messages: [...]`, which continues
    /// the session.
    Continue,
}

/// Hands the tool result `message` to session `id`: the answer's `data` (for a stream, the
/// `done` event's, whose `delta` events must spell the same text).
async fn deliver(stack: &Stack, key: &str, id: &str, how: Deliver, message: Value) -> Value {
    let send = format!("/api/v1/sessions/{id}/messages");
    match how {
        Deliver::Send => {
            let response = stack.post(&send, key, &json!({"message": message})).await;
            expect_data(response, 200).await
        }
        Deliver::Stream => {
            let response = stack
                .post(&send, key, &json!({"message": message, "stream": true}))
                .await;
            assert_eq!(response.status(), 200);
            let text = response.text().await.unwrap();
            let events = sse_events(&text);
            let (last, done) = events.last().expect("events");
            assert_eq!(last, "done", "{text}");
            let mut content = String::new();
            for (name, data) in &events[..events.len() - 1] {
                assert_eq!(name, "delta", "{text}");
                content.push_str(data["content"].as_str().unwrap());
            }
            assert_eq!(
                content,
                done["message"]["content"].as_str().unwrap_or(""),
                "the deltas spell the answer: {text}"
            );
            done.clone()
        }
        Deliver::Continue => {
            let response = stack
                .post(
                    "/api/v1/sessions",
                    key,
                    &json!({"context": {"sessionId": id}, "messages": [message]}),
                )
                .await;
            expect_data(response, 200).await
        }
    }
}

/// The sessions API's tool, as the tests send it (the same shape as OpenAI's).
fn session_tools() -> Value {
    json!([weather_tool()])
}

async fn sessions_tool_loop(how: Deliver) {
    let stack = Stack::embedded().await;
    let key = stack.create_key("session-tools").await;
    stack.upstream.then([
        calls(&[("call_s1", "get_weather", PARIS_ARGS)]),
        reply("It is 18 C in Paris."),
    ]);
    let created = stack
        .post(
            "/api/v1/sessions",
            &key,
            &json!({
                "model": MODEL,
                "messages": [
                    {"role": "system", "content": "Use the tools."},
                    {"role": "user", "content": "Weather in Paris?", "name": "alice"},
                ],
                "tools": session_tools(),
                "toolChoice": "auto",
                "parallelToolCalls": false,
            }),
        )
        .await;
    let created = expect_data(created, 201).await;
    let id = created["sessionId"].as_str().unwrap().to_owned();
    assert_eq!(created["message"]["role"], "assistant", "{created}");
    assert_eq!(
        created["message"]["toolCalls"],
        json!([called("call_s1", PARIS_ARGS)]),
        "{created}"
    );
    assert_eq!(created["finishReason"], "tool_calls", "{created}");

    let answered = deliver(
        &stack,
        &key,
        &id,
        how,
        json!({"role": "tool", "toolCallId": "call_s1", "content": "18 C"}),
    )
    .await;
    assert_eq!(answered["sessionId"], id.as_str(), "{answered}");
    assert_eq!(answered["message"]["role"], "assistant", "{answered}");
    assert_eq!(
        answered["message"]["content"], "It is 18 C in Paris.",
        "{answered}"
    );
    assert!(answered["message"].get("toolCalls").is_none(), "{answered}");
    if !matches!(how, Deliver::Continue) {
        assert_eq!(answered["finishReason"], "stop", "{answered}");
    }

    let history = expect_data(
        stack
            .get(&format!("/api/v1/sessions/{id}/messages"), &key)
            .await,
        200,
    )
    .await;
    let messages = history["messages"].as_array().unwrap();
    let shape: Vec<(&str, &str)> = messages
        .iter()
        .map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    assert_eq!(
        shape,
        [
            ("system", "Use the tools."),
            ("user", "Weather in Paris?"),
            ("assistant", ""),
            ("tool", "18 C"),
            ("assistant", "It is 18 C in Paris."),
        ],
        "{history}"
    );
    assert_eq!(messages[1]["name"], "alice", "{history}");
    assert_eq!(
        messages[2]["toolCalls"],
        json!([called("call_s1", PARIS_ARGS)]),
        "{history}"
    );
    assert_eq!(messages[3]["toolCallId"], "call_s1", "{history}");
    for plain in [0, 1, 4] {
        assert!(messages[plain].get("toolCalls").is_none(), "{history}");
        assert!(messages[plain].get("toolCallId").is_none(), "{history}");
    }

    let received = stack.upstream.received();
    assert_eq!(received.len(), 2, "{received:#?}");
    assert_eq!(received[0]["tools"], session_tools(), "{}", received[0]);
    assert_eq!(received[0]["tool_choice"], "auto", "{}", received[0]);
    assert_eq!(received[0]["parallel_tool_calls"], false, "{}", received[0]);
    // The session's defaults hold for the turn that answers the result.
    let second = &received[1];
    assert_eq!(second["tools"], session_tools(), "{second}");
    assert_eq!(second["tool_choice"], "auto", "{second}");
    assert_eq!(second["parallel_tool_calls"], false, "{second}");
    assert_eq!(
        second["messages"],
        json!([
            {"role": "system", "content": "Use the tools."},
            {"role": "user", "content": "Weather in Paris?", "name": "alice"},
            {"role": "assistant", "content": null, "tool_calls": [called("call_s1", PARIS_ARGS)]},
            {"role": "tool", "content": "18 C", "tool_call_id": "call_s1"},
        ]),
        "{second}"
    );
}

#[tokio::test]
async fn the_sessions_api_runs_a_tool_loop_and_keeps_it_in_the_history() {
    sessions_tool_loop(Deliver::Send).await;
}

#[tokio::test]
async fn a_streamed_tool_result_send_is_answered_and_kept_in_the_history() {
    sessions_tool_loop(Deliver::Stream).await;
}

#[tokio::test]
async fn a_session_continued_with_a_tool_result_runs_the_loop_and_keeps_it_in_the_history() {
    sessions_tool_loop(Deliver::Continue).await;
}

#[tokio::test]
async fn a_streamed_send_carries_the_tool_call_in_pieces_and_the_done_event() {
    let stack = Stack::embedded().await;
    let key = stack.create_key("session-stream-tools").await;
    // No user message yet: the session is created without asking the model.
    let created = stack
        .post(
            "/api/v1/sessions",
            &key,
            &json!({"model": MODEL, "messages": [], "tools": session_tools(),
                    "toolChoice": {"type": "function", "function": {"name": "get_weather"}}}),
        )
        .await;
    let id = expect_data(created, 201).await["sessionId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(stack.upstream.received().is_empty());

    stack.upstream.then([calls(&[
        ("call_t1", "get_weather", PARIS_ARGS),
        ("call_t2", "get_weather", OSLO_ARGS),
    ])]);
    let response = stack
        .post(
            &format!("/api/v1/sessions/{id}/messages"),
            &key,
            &json!({"message": {"role": "user", "content": "Paris and Oslo?"}, "stream": true,
                    "parallelToolCalls": true}),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = response.text().await.unwrap();
    let events = sse_events(&text);
    let (last, done) = events.last().expect("events");
    assert_eq!(last, "done", "{text}");
    let deltas: Vec<&Value> = events
        .iter()
        .filter(|(name, _)| name == "delta")
        .map(|(_, data)| data)
        .collect();
    assert_eq!(
        events.len(),
        deltas.len() + 1,
        "only deltas and the done event: {text}"
    );
    // Assembled as a client would: by index, the first piece naming the call.
    let mut assembled: Vec<(String, String, String, usize)> = Vec::new();
    for delta in &deltas {
        assert_eq!(delta["content"], "", "no text beside the calls: {text}");
        let piece = &delta["toolCall"];
        assert!(piece.is_object(), "every delta is a call's piece: {text}");
        let index = piece["index"].as_u64().unwrap() as usize;
        if let Some(id) = piece["id"].as_str() {
            assert_eq!(index, assembled.len(), "calls start in order: {text}");
            assert_eq!(piece["type"], "function", "{text}");
            assembled.push((
                id.to_owned(),
                piece["function"]["name"].as_str().unwrap().to_owned(),
                String::new(),
                0,
            ));
        } else {
            assert!(piece.get("type").is_none(), "{text}");
            assert!(piece["function"].get("name").is_none(), "{text}");
        }
        let call = assembled
            .get_mut(index)
            .expect("a piece follows its call's first");
        let fragment = piece["function"]["arguments"].as_str().unwrap();
        call.2.push_str(fragment);
        if !fragment.is_empty() {
            call.3 += 1;
        }
    }
    assert_eq!(assembled.len(), 2, "{text}");
    assert_eq!(
        (
            assembled[0].0.as_str(),
            assembled[0].1.as_str(),
            assembled[0].2.as_str()
        ),
        ("call_t1", "get_weather", PARIS_ARGS)
    );
    assert_eq!(
        (
            assembled[1].0.as_str(),
            assembled[1].1.as_str(),
            assembled[1].2.as_str()
        ),
        ("call_t2", "get_weather", OSLO_ARGS)
    );
    assert!(
        assembled.iter().all(|call| call.3 >= 2),
        "arguments in pieces: {text}"
    );

    assert_eq!(done["sessionId"], id.as_str(), "{done}");
    assert_eq!(done["finishReason"], "tool_calls", "{done}");
    assert_eq!(done["message"]["role"], "assistant", "{done}");
    assert_eq!(
        done["message"]["toolCalls"],
        json!([called("call_t1", PARIS_ARGS), called("call_t2", OSLO_ARGS)]),
        "{done}"
    );
    assert_eq!(
        done["usage"],
        json!({"promptTokens": 30, "completionTokens": 12, "totalTokens": 42}),
        "{done}"
    );

    // Stored as answered, and the model heard the session's tools and this send's choice.
    let history = expect_data(
        stack
            .get(&format!("/api/v1/sessions/{id}/messages"), &key)
            .await,
        200,
    )
    .await;
    let messages = history["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "{history}");
    assert_eq!(messages[1]["toolCalls"], done["message"]["toolCalls"]);
    let sent = stack.upstream.received().pop().unwrap();
    assert_eq!(sent["stream"], true, "{sent}");
    assert_eq!(sent["tools"], session_tools(), "{sent}");
    assert_eq!(
        sent["tool_choice"],
        json!({"type": "function", "function": {"name": "get_weather"}}),
        "{sent}"
    );
    assert_eq!(sent["parallel_tool_calls"], true, "{sent}");
}

async fn parallel_results(how: Deliver) {
    let stack = Stack::embedded().await;
    let key = stack.create_key("parallel").await;
    stack.upstream.then([
        calls(&[
            ("call_p1", "get_weather", PARIS_ARGS),
            ("call_p2", "get_weather", OSLO_ARGS),
        ]),
        reply("Paris 18 C, Oslo 64 F."),
    ]);
    let created = stack
        .post(
            "/api/v1/sessions",
            &key,
            &json!({"model": MODEL, "messages": [{"role": "user", "content": "Paris and Oslo?"}],
                    "tools": session_tools(), "parallelToolCalls": true}),
        )
        .await;
    let created = expect_data(created, 201).await;
    let id = created["sessionId"].as_str().unwrap().to_owned();
    assert_eq!(
        created["message"]["toolCalls"],
        json!([called("call_p1", PARIS_ARGS), called("call_p2", OSLO_ARGS)]),
        "{created}"
    );
    assert_eq!(stack.upstream.received().len(), 1);

    // The first result: stored, the model not asked (it waits for the other call's).
    let first = deliver(
        &stack,
        &key,
        &id,
        how,
        json!({"role": "tool", "toolCallId": "call_p2", "content": "64 F"}),
    )
    .await;
    assert_eq!(first["sessionId"], id.as_str(), "{first}");
    assert!(first.get("message").is_none(), "no answer yet: {first}");
    assert!(first.get("usage").is_none(), "no model call: {first}");
    assert_eq!(
        stack.upstream.received().len(),
        1,
        "the model was not asked before every call has its result"
    );
    let history = expect_data(
        stack
            .get(&format!("/api/v1/sessions/{id}/messages"), &key)
            .await,
        200,
    )
    .await;
    let messages = history["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 3, "{history}");
    assert_eq!(messages[2]["role"], "tool", "{history}");
    assert_eq!(messages[2]["toolCallId"], "call_p2", "{history}");

    // The last result: the model answers from both.
    let second = deliver(
        &stack,
        &key,
        &id,
        how,
        json!({"role": "tool", "toolCallId": "call_p1", "content": "18 C"}),
    )
    .await;
    assert_eq!(second["sessionId"], id.as_str(), "{second}");
    assert_eq!(
        second["message"]["content"], "Paris 18 C, Oslo 64 F.",
        "{second}"
    );
    let received = stack.upstream.received();
    assert_eq!(received.len(), 2);
    assert_eq!(
        received[1]["messages"],
        json!([
            {"role": "user", "content": "Paris and Oslo?"},
            {"role": "assistant", "content": null, "tool_calls": [
                called("call_p1", PARIS_ARGS), called("call_p2", OSLO_ARGS)]},
            {"role": "tool", "content": "64 F", "tool_call_id": "call_p2"},
            {"role": "tool", "content": "18 C", "tool_call_id": "call_p1"},
        ]),
        "{}",
        received[1]
    );
    assert_eq!(received[1]["parallel_tool_calls"], true);
    let history = expect_data(
        stack
            .get(&format!("/api/v1/sessions/{id}/messages"), &key)
            .await,
        200,
    )
    .await;
    let roles: Vec<&str> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant", "tool", "tool", "assistant"]);
}

#[tokio::test]
async fn parallel_tool_results_sent_one_by_one_are_answered_once_all_are_in() {
    parallel_results(Deliver::Send).await;
}

#[tokio::test]
async fn parallel_tool_results_streamed_one_by_one_are_answered_once_all_are_in() {
    parallel_results(Deliver::Stream).await;
}

#[tokio::test]
async fn parallel_tool_results_continued_one_by_one_are_answered_once_all_are_in() {
    parallel_results(Deliver::Continue).await;
}

// ---------------------------------------------------------------- gRPC

fn authorized<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    request
}

async fn grpc_tool_loop(continue_with_create: bool) {
    use openclaw_gateway::proto::{
        ChatMessage, CreateSessionRequest, GenerationOptions, ListMessagesRequest,
        SendMessageRequest, SessionContext, Tool, ToolCall, ToolChoice,
        session_service_client::SessionServiceClient,
    };

    let stack = Stack::embedded().await;
    let key = stack.create_key("grpc-tools").await;
    stack.upstream.then([
        calls(&[("call_g1", "get_weather", PARIS_ARGS)]),
        reply("It is 18 C in Paris."),
    ]);
    let mut client = SessionServiceClient::connect(format!("http://127.0.0.1:{}", stack.core.port))
        .await
        .expect("connect to the core");
    let tool = Tool {
        name: "get_weather".into(),
        description: "The current weather in a city".into(),
        parameters: weather_schema().to_string(),
        strict: Some(true),
    };
    let created = client
        .create_session(authorized(
            CreateSessionRequest {
                model: MODEL.into(),
                messages: vec![ChatMessage {
                    role: "user".into(),
                    content: "Weather in Paris?".into(),
                    name: "alice".into(),
                    ..Default::default()
                }],
                options: Some(GenerationOptions {
                    tools: vec![tool],
                    tool_choice: Some(ToolChoice {
                        mode: "required".into(),
                        function: String::new(),
                    }),
                    parallel_tool_calls: Some(false),
                    ..Default::default()
                }),
                ..Default::default()
            },
            &key,
        ))
        .await
        .expect("create the session")
        .into_inner();
    let id = created.session.expect("the session").session_id;
    let reply = created.reply.expect("the model answered");
    assert_eq!(reply.finish_reason, "tool_calls");
    let message = reply.message.expect("the reply's message");
    assert_eq!(message.role, "assistant");
    assert_eq!(message.content, "");
    let call = ToolCall {
        id: "call_g1".into(),
        name: "get_weather".into(),
        arguments: PARIS_ARGS.into(),
    };
    assert_eq!(message.tool_calls, vec![call.clone()]);

    let result = ChatMessage {
        role: "tool".into(),
        content: "18 C".into(),
        tool_call_id: "call_g1".into(),
        ..Default::default()
    };
    let answer = if continue_with_create {
        client
            .create_session(authorized(
                CreateSessionRequest {
                    messages: vec![result],
                    context: Some(SessionContext {
                        session_id: id.clone(),
                        strategy: String::new(),
                    }),
                    ..Default::default()
                },
                &key,
            ))
            .await
            .expect("continue the session with the result")
            .into_inner()
            .reply
    } else {
        client
            .send_message(authorized(
                SendMessageRequest {
                    session_id: id.clone(),
                    message: Some(result),
                    options: None,
                },
                &key,
            ))
            .await
            .expect("send the result")
            .into_inner()
            .reply
    };
    let answer = answer.expect("the model answered the result");
    assert_eq!(answer.finish_reason, "stop");
    let message = answer.message.expect("the answer's message");
    assert_eq!(message.content, "It is 18 C in Paris.");
    assert!(message.tool_calls.is_empty());

    let history = client
        .list_messages(authorized(
            ListMessagesRequest {
                session_id: id.clone(),
                page_size: 0,
                page_token: String::new(),
            },
            &key,
        ))
        .await
        .expect("read the history")
        .into_inner()
        .messages;
    let shape: Vec<(&str, &str, &[ToolCall], &str, &str)> = history
        .iter()
        .map(|m| {
            (
                m.role.as_str(),
                m.content.as_str(),
                m.tool_calls.as_slice(),
                m.tool_call_id.as_str(),
                m.name.as_str(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            ("user", "Weather in Paris?", &[][..], "", "alice"),
            ("assistant", "", &[call][..], "", ""),
            ("tool", "18 C", &[][..], "call_g1", ""),
            ("assistant", "It is 18 C in Paris.", &[][..], "", ""),
        ]
    );

    let received = stack.upstream.received();
    assert_eq!(received.len(), 2, "{received:#?}");
    assert_eq!(received[0]["tools"], json!([weather_tool()]));
    assert_eq!(received[0]["tool_choice"], "required");
    assert_eq!(received[0]["parallel_tool_calls"], false);
    assert_eq!(
        received[1]["messages"],
        json!([
            {"role": "user", "content": "Weather in Paris?", "name": "alice"},
            {"role": "assistant", "content": null, "tool_calls": [called("call_g1", PARIS_ARGS)]},
            {"role": "tool", "content": "18 C", "tool_call_id": "call_g1"},
        ])
    );
    assert_eq!(received[1]["tools"], json!([weather_tool()]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_runs_the_tool_loop_with_send_message_and_reads_it_back() {
    grpc_tool_loop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_runs_the_tool_loop_continuing_the_session_and_reads_it_back() {
    grpc_tool_loop(true).await;
}

// ---------------------------------------------------------------- the offline simulator

#[tokio::test]
async fn the_offline_simulator_plays_the_tool_loop_without_credentials() {
    let offline = Offline::start("offline-tools").await;
    let (http, base, key) = (&offline.http, &offline.base, &offline.key);
    let url = format!("{base}/v1/chat/completions");
    let question =
        json!({"role": "user", "content": "What is the weather in Paris? Use get_weather."});

    let response = post_with_key(
        http,
        &url,
        key,
        &json!({"model": MODEL, "messages": [question], "tools": [weather_tool()]}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{body}");
    assert_eq!(choice["message"]["content"], Value::Null, "{body}");
    let calls = choice["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{body}");
    let call = &calls[0];
    assert_eq!(call["id"], "call_sim_1_get_weather", "{body}");
    assert_eq!(call["type"], "function", "{body}");
    assert_eq!(call["function"]["name"], "get_weather", "{body}");
    let arguments = call["function"]["arguments"].as_str().unwrap().to_owned();
    let parsed: Value = serde_json::from_str(&arguments).expect("the arguments are JSON");
    assert!(parsed["city"].is_string(), "{parsed}");
    assert!(
        ["celsius", "fahrenheit"].contains(&parsed["unit"].as_str().unwrap()),
        "from the schema's enum: {parsed}"
    );

    // Streamed, the same call comes in pieces.
    let streamed = post_with_key(
        http,
        &url,
        key,
        &json!({"model": MODEL, "messages": [question], "tools": [weather_tool()], "stream": true}),
    )
    .await
    .text()
    .await
    .unwrap();
    let chunks: Vec<Value> = sse_events(&streamed)
        .into_iter()
        .filter(|(_, data)| data.is_object())
        .map(|(_, data)| data)
        .collect();
    assert!(streamed.ends_with("data: [DONE]\n\n"), "{streamed}");
    let pieces: Vec<&Value> = chunks
        .iter()
        .flat_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    assert!(pieces.len() >= 2, "{streamed}");
    assert_eq!(pieces[0]["id"], "call_sim_1_get_weather", "{streamed}");
    assert_eq!(pieces[0]["function"]["name"], "get_weather", "{streamed}");
    let joined: String = pieces
        .iter()
        .map(|p| p["function"]["arguments"].as_str().unwrap())
        .collect();
    assert_eq!(joined, arguments, "{streamed}");
    let finish = chunks
        .iter()
        .find_map(|c| c["choices"][0]["finish_reason"].as_str())
        .unwrap();
    assert_eq!(finish, "tool_calls", "{streamed}");

    // The result goes back; the simulated model answers from it.
    let response = post_with_key(
        http,
        &url,
        key,
        &json!({"model": MODEL, "tools": [weather_tool()], "messages": [
            question,
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_sim_1_get_weather", "content": "18 C and sunny"},
        ]}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["choices"][0]["finish_reason"], "stop", "{body}");
    assert!(
        body["choices"][0]["message"].get("tool_calls").is_none(),
        "{body}"
    );
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(
        content.contains(r#"The tool returned "18 C and sunny""#),
        "{content}"
    );

    // A question that asks for no tool is answered with text.
    let response = post_with_key(
        http,
        &url,
        key,
        &json!({"model": MODEL, "messages": [{"role": "user", "content": "Hello there"}],
                "tools": [weather_tool()]}),
    )
    .await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["choices"][0]["finish_reason"], "stop", "{body}");
    assert!(body["choices"][0]["message"]["content"].is_string());
}

// ---------------------------------------------------------------- refusals

async fn openai_error(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status);
    let body: Value = response.json().await.unwrap();
    assert!(body.get("success").is_none(), "not the envelope: {body}");
    let error = body["error"].clone();
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(error["type"], "invalid_request_error", "{body}");
    assert!(error["code"].is_string(), "{body}");
    error
}

#[tokio::test]
async fn v1_refuses_what_it_does_not_serve_naming_the_field() {
    let stack = Stack::embedded().await;
    let key = stack.create_key("v1-refusals").await;
    let user = json!({"role": "user", "content": "Weather in Paris?"});
    let base = || json!({"model": MODEL, "messages": [user.clone()]});
    let with = |field: &str, value: Value| {
        let mut body = base();
        body[field] = value;
        body
    };
    let cases = [
        (
            with("functions", json!([{"name": "get_weather"}])),
            "functions",
        ),
        (with("function_call", json!("auto")), "function_call"),
        (with("top_logprobs", json!(2)), "top_logprobs"),
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]}),
            "messages[0].content[1]",
        ),
        (
            json!({"model": MODEL, "messages": [
                {"role": "user", "content": "hi", "audio": {"id": "audio_1"}}]}),
            "messages[0].audio",
        ),
        (
            with("tools", json!([{"type": "retrieval"}])),
            "tools[0].type",
        ),
        (
            json!({"model": MODEL, "messages": [user.clone()], "tools": [weather_tool()],
                   "tool_choice": {"type": "function", "function": {"name": "get_time"}}}),
            "tool_choice",
        ),
        (
            json!({"model": MODEL, "messages": [
                user.clone(),
                {"role": "assistant", "content": null, "tool_calls": [called("call_1", "{}")]},
                {"role": "tool", "content": "18 C"}]}),
            "messages[2].tool_call_id",
        ),
        (
            with(
                "tools",
                json!([{"type": "function", "function": {"name": "get_weather",
                                                   "parameters": "not an object"}}]),
            ),
            "tools[0].parameters",
        ),
    ];
    for (body, param) in cases {
        let response = stack.post("/v1/chat/completions", &key, &body).await;
        let error = openai_error(response, 400).await;
        assert_eq!(error["param"], param, "{body} -> {error}");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("'{param}'")),
            "the message names '{param}': {message}"
        );
    }
    assert!(
        stack.upstream.received().is_empty(),
        "nothing reached the model: {:#?}",
        stack.upstream.received()
    );
}

#[tokio::test]
async fn the_sessions_api_refuses_bad_tool_fields_naming_them_in_camel_case() {
    let stack = Stack::embedded().await;
    let key = stack.create_key("session-refusals").await;
    let user = json!({"role": "user", "content": "Weather in Paris?"});
    let create = |extra: Value| {
        let mut body = json!({"model": MODEL, "messages": [user.clone()]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    let cases = [
        (
            create(json!({"tools": [weather_tool()],
                          "toolChoice": {"type": "function", "function": {"name": "get_time"}}})),
            "toolChoice",
        ),
        (
            create(json!({"toolChoice": "sometimes", "tools": [weather_tool()]})),
            "toolChoice",
        ),
        (
            create(json!({"tools": [{"type": "retrieval"}]})),
            "tools[0].type",
        ),
        (
            create(json!({"tools": [{"type": "function", "function": {
                "name": "get_weather", "parameters": "not an object"}}]})),
            "tools[0].parameters",
        ),
        (
            create(json!({"tools": [{"type": "function", "function": {"name": "get weather"}}]})),
            "tools[0].name",
        ),
        (
            json!({"model": MODEL, "messages": [
                user.clone(),
                {"role": "assistant", "content": "", "toolCalls": [called("call_1", "{}")]},
                {"role": "tool", "content": "18 C"}]}),
            "messages[2].toolCallId",
        ),
        (
            json!({"model": MODEL, "messages": [
                {"role": "user", "content": "hi", "toolCalls": [called("call_1", "{}")]}]}),
            "messages[0].toolCalls",
        ),
        (
            json!({"model": MODEL, "messages": [
                user.clone(),
                {"role": "assistant", "content": "", "toolCalls": [
                    {"id": "", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]}]}),
            "messages[1].toolCalls[0].id",
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "file", "file": {"file_id": "file-1"}}]}]}),
            "messages[0].content[1]",
        ),
    ];
    for (body, field) in cases {
        let response = stack.post("/api/v1/sessions", &key, &body).await;
        let error = expect_error(response, 400, "INVALID_REQUEST").await;
        let details = error["details"].as_str().unwrap();
        assert!(
            details.contains(&format!("'{field}'")),
            "{body}: the details name '{field}': {error}"
        );
    }

    // Per send too, once a session exists (created without asking the model).
    let created = stack
        .post(
            "/api/v1/sessions",
            &key,
            &json!({"model": MODEL, "messages": [], "tools": [weather_tool()]}),
        )
        .await;
    let id = expect_data(created, 201).await["sessionId"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/api/v1/sessions/{id}/messages");
    for (body, field) in [
        (
            json!({"message": user, "toolChoice": {"type": "function", "function": {"name": "get_time"}}}),
            "toolChoice",
        ),
        (
            json!({"message": user, "tools": [{"type": "retrieval"}]}),
            "tools[0].type",
        ),
        (
            json!({"message": user, "tools": [{"type": "function", "function": {
                "name": "get_weather", "parameters": [1, 2]}}]}),
            "tools[0].parameters",
        ),
        (
            json!({"message": {"role": "user", "content": "hi", "toolCalls": [called("c", "{}")]}}),
            "message.toolCalls",
        ),
    ] {
        let response = stack.post(&path, &key, &body).await;
        let error = expect_error(response, 400, "INVALID_REQUEST").await;
        let details = error["details"].as_str().unwrap();
        assert!(
            details.contains(&format!("'{field}'")),
            "{body}: the details name '{field}': {error}"
        );
    }
    assert!(
        stack.upstream.received().is_empty(),
        "nothing reached the model: {:#?}",
        stack.upstream.received()
    );
}

/// OpenAI fields the gateway does not serve, in the sessions API's spelling: `/v1` refuses them
/// by name, and the contract says nothing is silently dropped.
#[tokio::test]
async fn the_sessions_api_refuses_openai_fields_it_does_not_serve() {
    let stack = Stack::embedded().await;
    let key = stack.create_key("session-unserved").await;
    let user = json!({"role": "user", "content": "Weather in Paris?"});
    for (field, body) in [
        (
            "functions",
            json!({"model": MODEL, "messages": [user], "functions": [{"name": "get_weather"}]}),
        ),
        (
            "functionCall",
            json!({"model": MODEL, "messages": [user], "functionCall": "auto"}),
        ),
        (
            "topLogprobs",
            json!({"model": MODEL, "messages": [user], "topLogprobs": 2}),
        ),
        (
            "messages[0].audio",
            json!({"model": MODEL, "messages": [
                {"role": "user", "content": "hi", "audio": {"id": "audio_1"}}]}),
        ),
    ] {
        let response = stack.post("/api/v1/sessions", &key, &body).await;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        assert_eq!(status, 400, "'{field}' is refused: {text}");
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["error"]["code"], "INVALID_REQUEST", "{body}");
        assert!(
            body["error"]["details"]
                .as_str()
                .unwrap()
                .contains(&format!("'{field}'")),
            "{body}"
        );
    }
    assert!(
        stack.upstream.received().is_empty(),
        "nothing reached the model: {:#?}",
        stack.upstream.received()
    );
}
