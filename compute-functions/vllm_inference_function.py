"""FIRST's remote inference function for Globus Compute, as the gateway calls it.

Register it on the model endpoint (`globus_compute_sdk.Client().register_function(
vllm_inference_function)`) and put the function id in the target's `function_uuid`.

Contract (the gateway's `proxy/globus_compute.rs`, FIRST's
`compute-functions/vllm_register_function_with_streaming.py`):

* Argument: `{"model_params": {...the OpenAI body..., "openai_endpoint": "chat/completions",
  "api_port": 8000}}`. The gateway sends it as JSONData and asks for JSONData results, so
  the endpoint needs no dill on the gateway side.
* Non-streaming: POST the body to `{scheme}://127.0.0.1:{api_port}/v1/{openai_endpoint}`
  and return a JSON *string*: the server's answer plus `response_time` and
  `throughput_tokens_per_second`. A non-200 answer raises
  `Exception("API request failed with status code: NNN\\nResponse text: ...")`; the gateway
  maps NNN (4xx to the client, 5xx to failover).
* Streaming (`stream: true` with `streaming_server_host/port/protocol`, `stream_task_id`,
  `stream_task_token`): the SSE lines of the answer are POSTed in batches (up to 20 lines
  or 0.5 s) to `{protocol}://{host}:{port}/resource_server/api/streaming/data/`, then
  `done/` (or `error/`), with `X-Internal-Secret: $INTERNAL_STREAMING_SECRET` and
  `X-Stream-Task-Token`. Returns a JSON string with `"streaming": true` and `"status"`.

Only the standard library is used, and every import is inside the function, because
Globus Compute ships the function's source to the endpoint.

Environment on the compute node: OPENAI_API_KEY (default "random_api_key", FIRST's),
INTERNAL_STREAMING_SECRET, MODEL_SERVER_SCHEME ("https" like FIRST's launch scripts, or
"http"), STREAMING_VERIFY_TLS ("0" to skip certificate checks on the callback URL).
"""


def vllm_inference_function(parameters):
    import json
    import os
    import ssl
    import time
    import urllib.error
    import urllib.request

    params = dict(parameters["model_params"])
    openai_endpoint = params.pop("openai_endpoint")
    api_port = params.pop("api_port")
    stream_host = params.pop("streaming_server_host", None)
    stream_port = params.pop("streaming_server_port", None)
    stream_protocol = params.pop("streaming_server_protocol", "https")
    stream_task_id = params.pop("stream_task_id", None)
    stream_token = params.pop("stream_task_token", None)

    scheme = os.environ.get("MODEL_SERVER_SCHEME", "https")
    url = f"{scheme}://127.0.0.1:{api_port}/v1/{openai_endpoint}"
    headers = {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {os.environ.get('OPENAI_API_KEY', 'random_api_key')}",
    }
    # The model server is on this node, with a self-signed certificate (FIRST: verify=False).
    local_tls = ssl.create_default_context()
    local_tls.check_hostname = False
    local_tls.verify_mode = ssl.CERT_NONE

    def api_error(status, text, response_headers, started):
        return Exception(
            f"API request failed with status code: {status}\n"
            f"Response text: {text}\n"
            f"Response headers: {dict(response_headers or {})}\n"
            f"Response time: {time.time() - started:.3f}"
        )

    started = time.time()
    request = urllib.request.Request(
        url, data=json.dumps(params).encode(), headers=headers, method="POST"
    )

    if not (params.get("stream") and stream_host and stream_task_id and stream_token):
        try:
            with urllib.request.urlopen(request, context=local_tls) as response:
                text = response.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            raise api_error(e.code, e.read().decode("utf-8", "replace"), e.headers, started)
        elapsed = time.time() - started
        try:
            answer = json.loads(text)
        except ValueError:
            answer = {"completion": text}
        total = (answer.get("usage") or {}).get("total_tokens") or 0
        answer["response_time"] = elapsed
        answer["throughput_tokens_per_second"] = total / elapsed if elapsed > 0 else 0
        return json.dumps(answer, indent=4)

    base = f"{stream_protocol}://{stream_host}:{stream_port}/resource_server/api/streaming"
    callback_tls = ssl.create_default_context()
    if os.environ.get("STREAMING_VERIFY_TLS", "1") == "0":
        callback_tls.check_hostname = False
        callback_tls.verify_mode = ssl.CERT_NONE
    callback_headers = {
        "Content-Type": "application/json",
        "X-Internal-Secret": os.environ.get("INTERNAL_STREAMING_SECRET", ""),
        "X-Stream-Task-Token": stream_token,
    }

    def post(kind, body, timeout):
        req = urllib.request.Request(
            f"{base}/{kind}/",
            data=json.dumps({"task_id": stream_task_id, "type": kind, **body}).encode(),
            headers=callback_headers,
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=callback_tls) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    chunks = sent = failed = 0
    batch = []
    last_flush = time.time()

    def flush():
        nonlocal sent, failed, batch, last_flush
        if batch:
            if post("data", {"data": "\n".join(batch)}, 2):
                sent += len(batch)
            else:
                failed += len(batch)
            batch = []
        last_flush = time.time()

    try:
        response = urllib.request.urlopen(request, context=local_tls)
    except urllib.error.HTTPError as e:
        error = api_error(e.code, e.read().decode("utf-8", "replace"), e.headers, started)
        post("error", {"error": str(error)}, 10)
        return json.dumps({"streaming": True, "task_id": stream_task_id, "status": "error",
                           "error": str(error)})
    with response:
        for raw in response:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                break
            batch.append(line)
            chunks += 1
            if len(batch) >= 20 or time.time() - last_flush >= 0.5:
                flush()
    flush()
    post("done", {}, 10)
    elapsed = time.time() - started
    result = {"streaming": True, "task_id": stream_task_id, "response_time": elapsed,
              "throughput_tokens_per_second": chunks / elapsed if elapsed > 0 else 0,
              "total_tokens": chunks, "status": "completed", "total_chunks": chunks,
              "chunks_sent_to_server": sent}
    if failed:
        result["warning"] = f"{failed} chunks failed to send to the streaming server"
    return json.dumps(result)
