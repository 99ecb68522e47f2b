"""Regenerates the task results an old Globus Compute endpoint (before 3.6.0, which
ignores `result_serializers`) sends back: the SDK's DillDataBase64 strategy, i.e.
"00\n" + codecs.encode(dill.dumps(result), "base64").decode() (globus-compute
serialize/concretes.py), and plain pickle at other protocols for the decoder's range.

Run with dill installed: python3 make_results.py (writes the .txt files beside it).
The fixtures are committed; tests never run Python.
"""
import codecs
import datetime
import json
import pickle

import dill

ANSWER = {
    "id": "chatcmpl-old-endpoint",
    "object": "chat.completion",
    "created": 1717430400,
    "model": "old-endpoint",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "pickled on a 3.5 endpoint \u00e9\u4e2d"},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
    "response_time": 0.25,
    "throughput_tokens_per_second": 32.0,
}


class Answer:
    def __init__(self, body):
        self.body = body


def dill_data_base64(obj, **kw):
    return "00\n" + codecs.encode(dill.dumps(obj, **kw), "base64").decode()


def pickle_base64(obj, protocol):
    return "00\n" + codecs.encode(pickle.dumps(obj, protocol=protocol), "base64").decode()


def write(name, text):
    with open(name, "w", newline="") as f:
        f.write(text)


# FIRST's function returns json.dumps(..., indent=4): a str.
write("result-dill-str.txt", dill_data_base64(json.dumps(ANSWER, indent=4)))
# The same answer as a dict (a function returning the parsed JSON), at protocols 2, 3, 5.
write("result-pickle2-dict.txt", pickle_base64(ANSWER, 2))
write("result-pickle3-dict.txt", pickle_base64(ANSWER, 3))
write("result-dill5-dict.txt", dill_data_base64(ANSWER, protocol=5))
# bytes holding the JSON text.
write("result-dill-bytes.txt", dill_data_base64(json.dumps(ANSWER).encode()))
# bytes at protocol 2 are written as _codecs.encode(str, "latin1").
write("result-pickle2-bytes.txt", pickle_base64(json.dumps(ANSWER).encode(), 2))
# Not plain values: an instance of a class (its __dict__ is a dict: must not pass as one),
write("result-dill-object.txt", dill_data_base64(Answer(ANSWER)))
# a datetime (a global the decoder must refuse).
write("result-dill-datetime.txt", dill_data_base64(datetime.datetime(2024, 6, 3, 9, 0, 12)))
# DillCode (01): a function, never a plain value.
def answer():
    return ANSWER
write("result-dillcode-function.txt", "01\n" + codecs.encode(dill.dumps(answer), "base64").decode())
print(json.dumps(ANSWER))
