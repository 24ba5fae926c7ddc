#!/usr/bin/env python3
"""Interop driver: one real `opentelemetry-opamp-client` (0.5b0, plain HTTP) scripted over stdin/stdout.

Run with the venv made by tests/interop/setup.sh:

    $OPAMPD_INTEROP_DIR/venv/bin/python tests/interop/python_collector.py \
        --endpoint http://127.0.0.1:PORT/v1/opamp --heartbeat-seconds 1 --service-name NAME \
        [--instance-uid UUID] [--auth-header "Bearer xyz"] [--header "K: V"]... \
        [--timeout-ms 5000] [--no-remote-config] [--effective-config-json JSON] [--log-level LEVEL]

stdout: one JSON object per line (flushed), see tests/interop/README.md for every event.
stdin:  one JSON command per line: health, apply, stop (EOF = stop). Exit 0 after a clean stop.
The client library logs to stderr (level --log-level, default WARNING).
"""

from __future__ import annotations

import argparse
import atexit
import base64
import json
import logging
import os
import platform
import signal
import socket
import sys
import threading
import uuid

try:
    import requests
    from opentelemetry._opamp.agent import OpAMPAgent
    from opentelemetry._opamp.callbacks import OpAMPCallbacks
    from opentelemetry._opamp.client import _DEFAULT_CAPABILITIES, OpAMPClient
    from opentelemetry._opamp.proto import opamp_pb2
    from opentelemetry._opamp.transport.requests import RequestsTransport
    from opentelemetry._opamp.version import __version__ as CLIENT_VERSION
except ImportError as exc:  # pragma: no cover - environment problem
    print(
        json.dumps({"event": "error", "source": "driver", "message": f"cannot import the OpAMP client: {exc}; run tests/interop/setup.sh and use its venv python"}),
        flush=True,
    )
    sys.exit(3)

_out_lock = threading.Lock()


def emit(obj: dict) -> None:
    line = json.dumps(obj, separators=(",", ":"), default=str)
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def uid_str(b: bytes) -> str:
    if len(b) == 16:
        return str(uuid.UUID(bytes=bytes(b)))
    return bytes(b).hex()


def files_of(cfg_map) -> dict:
    files = {}
    for name, f in cfg_map.config_map.items():
        try:
            text = f.body.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        files[name] = {
            "content_type": f.content_type,
            "body": text,
            "body_b64": base64.b64encode(f.body).decode("ascii"),
        }
    return files


def describe_a2s(m) -> dict:
    rcs = None
    if m.HasField("remote_config_status"):
        rcs = {
            "status": opamp_pb2.RemoteConfigStatuses.Name(m.remote_config_status.status).split("_", 1)[1],
            "hash": m.remote_config_status.last_remote_config_hash.hex(),
            "error_message": m.remote_config_status.error_message,
        }
    return {
        "instance_uid": uid_str(m.instance_uid),
        "sequence_num": m.sequence_num,
        "capabilities": m.capabilities,
        "flags": m.flags,
        "agent_description": m.HasField("agent_description"),
        "effective_config": m.HasField("effective_config"),
        "remote_config_status": rcs,
        "health": m.HasField("health"),
        "agent_disconnect": m.HasField("agent_disconnect"),
    }


def describe_s2a(m, own_uid: bytes) -> dict:
    err = None
    if m.HasField("error_response"):
        err = {
            "type": opamp_pb2.ServerErrorResponseType.Name(m.error_response.type).split("_", 1)[1],
            "message": m.error_response.error_message,
            "retry_after_nanoseconds": (
                m.error_response.retry_info.retry_after_nanoseconds if m.error_response.HasField("retry_info") else None
            ),
        }
    rc = None
    if m.HasField("remote_config"):
        rc = {"hash": m.remote_config.config_hash.hex(), "files": files_of(m.remote_config.config)}
    hb = None
    if m.HasField("connection_settings") and m.connection_settings.HasField("opamp"):
        hb = m.connection_settings.opamp.heartbeat_interval_seconds
    return {
        "instance_uid": uid_str(m.instance_uid),
        "uid_matches": bytes(m.instance_uid) == own_uid,
        "flags": m.flags,
        "capabilities": m.capabilities,
        "remote_config_hash": rc["hash"] if rc else None,
        "remote_config": rc,
        "has_command": m.HasField("command"),
        "command_type": (opamp_pb2.CommandType.Name(m.command.type).split("_", 1)[1] if m.HasField("command") else None),
        "error": err,
        "has_connection_settings": m.HasField("connection_settings"),
        "heartbeat_interval_seconds": hb,
        "has_packages_available": m.HasField("packages_available"),
        "new_instance_uid": (
            uid_str(m.agent_identification.new_instance_uid) if m.HasField("agent_identification") else None
        ),
    }


class Driver:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.tls = threading.local()  # last HTTP response / ServerToAgent seen by the current thread
        self.lock = threading.Lock()
        self.last_config = None  # opamp_pb2.AgentRemoteConfig
        self.disconnect_sent = False

        headers = {}
        for h in args.header or []:
            if ":" not in h:
                raise SystemExit(f"--header must be 'Name: value', got {h!r}")
            k, v = h.split(":", 1)
            headers[k.strip()] = v.strip()
        if args.auth_header:
            headers["Authorization"] = args.auth_header

        # ReportsHealth is added because the driver's `health` command reports health (see cmd_health).
        caps = _DEFAULT_CAPABILITIES | opamp_pb2.AgentCapabilities.AgentCapabilities_ReportsHealth
        if args.no_remote_config:
            caps = (
                opamp_pb2.AgentCapabilities.AgentCapabilities_ReportsStatus
                | opamp_pb2.AgentCapabilities.AgentCapabilities_ReportsHeartbeat
                | opamp_pb2.AgentCapabilities.AgentCapabilities_ReportsEffectiveConfig
            )

        session = requests.Session()
        session.hooks["response"].append(self._on_http_response)
        driver = self

        class RecordingTransport(RequestsTransport):
            """The client's own requests transport, observed: reports each exchange as a `sent` event."""

            def send(self, *, url, headers, data, **kw):
                a2s = opamp_pb2.AgentToServer.FromString(data)
                driver.tls.http = None
                driver.tls.s2a = None
                try:
                    msg = super().send(url=url, headers=headers, data=data, **kw)
                except Exception as exc:
                    driver._emit_sent(a2s, ok=False, error=str(exc))
                    raise
                driver.tls.s2a = msg
                if a2s.HasField("agent_disconnect"):
                    driver.disconnect_sent = True
                driver._emit_sent(a2s, ok=True, error=None)
                return msg

        self.client = OpAMPClient(
            endpoint=args.endpoint,
            headers=headers,
            timeout_millis=args.timeout_ms,
            agent_identifying_attributes={"service.name": args.service_name},
            agent_non_identifying_attributes={
                "host.name": socket.gethostname(),
                "os.type": platform.system().lower(),
                "telemetry.sdk.language": "python",
            },
            capabilities=caps,
            transport=RecordingTransport(session=session),
        )
        if args.instance_uid:
            # 0.5b0 has no option for this: the uid is a private attribute set to uuid7() in __init__.
            if not hasattr(self.client, "_instance_uid"):
                raise SystemExit("this client version has no _instance_uid attribute; --instance-uid unsupported")
            self.client._instance_uid = uuid.UUID(args.instance_uid).bytes
        if args.effective_config_json:
            self.client.update_effective_config(json.loads(args.effective_config_json), "application/json")

        self.agent = OpAMPAgent(
            interval=args.heartbeat_seconds,
            callbacks=Callbacks(self),
            client=self.client,
        )

    # -- observation hooks
    def _on_http_response(self, resp, *a, **kw):
        self.tls.http = resp
        return resp

    def _emit_sent(self, a2s, ok: bool, error):
        resp = getattr(self.tls, "http", None)
        ev = {"event": "sent", "ok": ok}
        ev.update(describe_a2s(a2s))
        ev["http_status"] = resp.status_code if resp is not None else None
        if resp is not None:
            ev["response_content_type"] = resp.headers.get("Content-Type")
            ev["response_content_encoding"] = resp.headers.get("Content-Encoding")
        if error is not None:
            ev["error"] = error
        emit(ev)

    @property
    def uid(self) -> bytes:
        return self.client._instance_uid

    # -- commands
    def cmd_apply(self, cmd: dict):
        status_name = str(cmd.get("status", "APPLIED")).upper()
        try:
            status = opamp_pb2.RemoteConfigStatuses.Value("RemoteConfigStatuses_" + status_name)
        except ValueError:
            emit({"event": "error", "source": "driver", "message": f"apply: unknown status {status_name!r}"})
            return
        with self.lock:
            cfg = self.last_config
        if cmd.get("hash"):
            config_hash = bytes.fromhex(cmd["hash"])
        elif cfg is not None:
            config_hash = bytes(cfg.config_hash)
        else:
            emit({"event": "error", "source": "driver", "message": "apply: no remote config received yet"})
            return
        error = str(cmd.get("error", ""))
        if status_name == "APPLIED" and cfg is not None:
            self._update_effective_config(cfg)
        rcs = self.client.update_remote_config_status(
            remote_config_hash=config_hash, status=status, error_message=error
        )
        if rcs is not None:
            self.agent.send(self.client.build_remote_config_status_response_message(rcs))
        emit(
            {
                "event": "ack",
                "cmd": "apply",
                "status": status_name,
                "hash": config_hash.hex(),
                "queued": rcs is not None,
            }
        )

    def cmd_health(self, cmd: dict):
        # 0.5b0 has no health API. The message is the client's own heartbeat (its uid, its sequence
        # number, its capabilities) with the `health` field of its own generated protobuf filled in,
        # queued on its own worker and sent by its own transport: the closest a real client gets.
        healthy = bool(cmd.get("healthy", True))
        a2s = opamp_pb2.AgentToServer.FromString(self.client.build_heartbeat_message())
        a2s.health.healthy = healthy
        a2s.health.last_error = str(cmd.get("last_error", ""))
        a2s.health.status = "StatusOK" if healthy else "StatusRecoverableError"
        self.agent.send(a2s.SerializeToString())
        emit({"event": "ack", "cmd": "health", "healthy": healthy})

    def _update_effective_config(self, cfg):
        # The client only ships EffectiveConfig inside full-state reports (first message, and after the
        # server sets ReportFullState); this records what would be reported.
        try:
            decoded = dict(self.client.decode_remote_config(cfg))
            self.client.update_effective_config(decoded, "application/json")
        except Exception:  # non-JSON config: report the raw bodies
            items = list(cfg.config.config_map.items())
            ctype = items[0][1].content_type if items else "text/plain"
            self.client.update_effective_config({k: bytes(v.body) for k, v in items}, ctype)

    def stop(self):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # OpAMPAgent.stop() sends AgentToServer{agent_disconnect} synchronously, then joins its threads.
        self.agent.stop(timeout=5)
        # start() registered stop() with atexit: unregister it, else a second agent_disconnect is sent
        # when the interpreter exits.
        atexit.unregister(self.agent.stop)
        emit({"event": "stopped", "agent_disconnect_sent": self.disconnect_sent})


class Callbacks(OpAMPCallbacks):
    def __init__(self, driver: Driver):
        self.d = driver

    def on_connect_failed(self, agent, client, error):
        emit({"event": "error", "source": "client", "message": str(error)})

    def on_error(self, agent, client, error_response):
        s2a = getattr(self.d.tls, "s2a", None)
        ev = {"event": "message", "callback": "on_error"}
        if s2a is not None:
            ev.update(describe_s2a(s2a, self.d.uid))
        emit(ev)
        type_name = opamp_pb2.ServerErrorResponseType.Name(error_response.type).split("_", 1)[1]
        emit(
            {
                "event": "error",
                "source": "server",
                "message": f"ServerErrorResponse {type_name}: {error_response.error_message}",
                "error_type": type_name,
            }
        )

    def on_message(self, agent, client, message):
        s2a = getattr(self.d.tls, "s2a", None)
        ev = {"event": "message", "callback": "on_message"}
        if s2a is not None:
            ev.update(describe_s2a(s2a, self.d.uid))
        else:  # not expected: the worker thread both sends and calls back
            rc = message.remote_config
            ev.update({"remote_config_hash": rc.config_hash.hex() if rc is not None else None})
        emit(ev)
        rc = message.remote_config
        if rc is not None:
            with self.d.lock:
                self.d.last_config = rc
            decode_error = None
            try:
                list(client.decode_remote_config(rc))
            except Exception as exc:  # the client's own parser accepts JSON only
                decode_error = str(exc)
            emit(
                {
                    "event": "remote_config",
                    "hash": rc.config_hash.hex(),
                    "files": files_of(rc.config),
                    "decode_error": decode_error,
                }
            )


class _Stop(Exception):
    pass


def _raise_stop(signum, frame):
    raise _Stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoint", required=True)
    p.add_argument("--heartbeat-seconds", type=float, default=1.0, help="OpAMPAgent interval (any float > 0)")
    p.add_argument("--instance-uid", help="UUID string (set through the client's private _instance_uid)")
    p.add_argument("--auth-header", help="value of the Authorization header, e.g. 'Bearer xyz'")
    p.add_argument("--header", action="append", help="extra header 'Name: value' (repeatable)")
    p.add_argument("--service-name", default="python-collector")
    p.add_argument("--timeout-ms", type=int, default=5000, help="HTTP timeout (client default is 1000)")
    p.add_argument("--no-remote-config", action="store_true", help="drop AcceptsRemoteConfig/ReportsRemoteConfig")
    p.add_argument("--effective-config-json", help="JSON object {filename: value} reported as EffectiveConfig")
    p.add_argument("--log-level", default=os.environ.get("OPAMP_DRIVER_LOG_LEVEL", "WARNING"))
    args = p.parse_args()
    if args.heartbeat_seconds <= 0:
        p.error("--heartbeat-seconds must be > 0")

    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    driver = Driver(args)
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)

    emit(
        {
            "event": "started",
            "instance_uid": uid_str(driver.uid),
            "client": "python",
            "client_package": "opentelemetry-opamp-client",
            "client_version": CLIENT_VERSION,
            "capabilities": driver.client._capabilities,
            "heartbeat_seconds": args.heartbeat_seconds,
            "pid": os.getpid(),
        }
    )
    driver.agent.start()

    try:
        while True:
            line = sys.stdin.readline()
            if not line:
                break  # EOF: behave like stop
            line = line.strip()
            if not line:
                continue
            try:
                cmd = json.loads(line)
                if not isinstance(cmd, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                emit({"event": "error", "source": "driver", "message": f"bad command line {line!r}: {exc}"})
                continue
            name = cmd.get("cmd")
            if name == "stop":
                break
            if name == "apply":
                driver.cmd_apply(cmd)
            elif name == "health":
                driver.cmd_health(cmd)
            else:
                emit({"event": "unsupported", "cmd": name})
    except _Stop:
        pass

    driver.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
