#!/usr/bin/env node
// Interop driver: one real `@elastic/opamp-client-node` (0.5.0, plain HTTP) scripted over stdin/stdout.
//
//   node tests/interop/node_collector.mjs \
//       --endpoint http://127.0.0.1:PORT/v1/opamp --heartbeat-seconds 1 --service-name NAME \
//       [--instance-uid UUID] [--auth-header "Bearer xyz"] [--header "K: V"]... \
//       [--no-remote-config] [--interop-dir DIR] [--log-level warn]
//
// The package is loaded from <interop dir>/node/node_modules, where tests/interop/setup.sh installs it.
// The interop dir is --interop-dir, else $OPAMPD_INTEROP_DIR (relative = relative to the repo root),
// else <repo root>/target/interop.
//
// stdout: one JSON object per line, see tests/interop/README.md for every event.
// stdin:  one JSON command per line: health, apply, stop (EOF = stop). Exit 0 after a clean stop.
// The client's own log goes to stderr as JSON lines (level --log-level, default warn).

import {createRequire} from 'node:module';
import {subscribe} from 'node:diagnostics_channel';
import {hostname, type as osType} from 'node:os';
import path from 'node:path';
import {createInterface} from 'node:readline';
import {fileURLToPath} from 'node:url';
import {parseArgs} from 'node:util';

function emit(obj) {
    process.stdout.write(
        JSON.stringify(obj, (_k, v) => (typeof v === 'bigint' ? Number(v) : v)) + '\n'
    );
}

const {values: args} = parseArgs({
    options: {
        endpoint: {type: 'string'},
        'heartbeat-seconds': {type: 'string', default: '1'},
        'instance-uid': {type: 'string'},
        'auth-header': {type: 'string'},
        header: {type: 'string', multiple: true},
        'service-name': {type: 'string', default: 'node-collector'},
        'no-remote-config': {type: 'boolean', default: false},
        'interop-dir': {type: 'string'},
        'log-level': {type: 'string', default: process.env.OPAMP_DRIVER_LOG_LEVEL ?? 'warn'},
    },
    strict: true,
});

function fail(message, code = 2) {
    emit({event: 'error', source: 'driver', message});
    process.exit(code);
}

if (!args.endpoint) fail('--endpoint is required');
const heartbeatSeconds = Number(args['heartbeat-seconds']);
if (!(heartbeatSeconds >= 0.1)) fail('--heartbeat-seconds must be a number >= 0.1 (client minimum)');

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
let interopDir = args['interop-dir'] ?? process.env.OPAMPD_INTEROP_DIR ?? 'target/interop';
if (!path.isAbsolute(interopDir)) interopDir = path.join(repoRoot, interopDir);
const nodeDir = path.join(interopDir, 'node');
const req = createRequire(path.join(nodeDir, 'package.json'));

let opamp, uuid, clientVersion;
try {
    opamp = req('@elastic/opamp-client-node');
    uuid = req('uuid');
    clientVersion = req('@elastic/opamp-client-node/package.json').version;
} catch (err) {
    fail(`cannot load @elastic/opamp-client-node from ${nodeDir}: ${err.message}; run tests/interop/setup.sh`, 3);
}
const {
    createOpAMPClient,
    AgentCapabilities,
    RemoteConfigStatuses,
    DIAG_CH_SEND_SUCCESS,
    DIAG_CH_SEND_FAIL,
} = opamp;

// ---------------------------------------------------------------- logging (client log -> stderr)
const LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal'];
const minLevel = Math.max(0, LEVELS.indexOf(String(args['log-level']).toLowerCase()));
const log = {};
for (const [i, lvl] of LEVELS.entries()) {
    log[lvl] = (...a) => {
        if (i < minLevel) return;
        const fields = typeof a[0] === 'object' && a[0] !== null ? a.shift() : {};
        let msg = a.join(' ');
        if (fields instanceof Error) {
            msg = `${msg} ${fields.stack}`;
        }
        let extra = '';
        try {
            extra = JSON.stringify(fields, (_k, v) =>
                typeof v === 'bigint' ? Number(v) : v instanceof Error ? String(v) : v
            );
        } catch {
            extra = String(fields);
        }
        process.stderr.write(`${new Date().toISOString()} ${lvl.toUpperCase()} opamp-client: ${msg} ${extra}\n`);
    };
}

// ---------------------------------------------------------------- helpers
const hex = (u8) => (u8 ? Buffer.from(u8).toString('hex') : null);
function uidStr(u8) {
    if (!u8) return null;
    if (u8.length === 16) return uuid.stringify(u8);
    return hex(u8);
}
const sameBytes = (a, b) => a && b && Buffer.from(a).equals(Buffer.from(b));
const utf8 = new TextDecoder('utf-8', {fatal: true});
function filesOf(configMap) {
    const files = {};
    for (const [name, f] of Object.entries(configMap?.configMap ?? {})) {
        let text = null;
        try {
            text = utf8.decode(f.body);
        } catch {
            text = null;
        }
        files[name] = {
            content_type: f.contentType,
            body: text,
            body_b64: Buffer.from(f.body).toString('base64'),
        };
    }
    return files;
}
const enumName = (prefix, value) => {
    const names = {
        RemoteConfigStatuses: ['UNSET', 'APPLIED', 'APPLYING', 'FAILED'],
        CommandType: ['Restart'],
    }[prefix];
    return names?.[value] ?? String(value);
};

function describeA2S(a2s) {
    const rcs = a2s.remoteConfigStatus;
    return {
        instance_uid: uidStr(a2s.instanceUid),
        sequence_num: a2s.sequenceNum,
        capabilities: a2s.capabilities,
        flags: a2s.flags,
        agent_description: Boolean(a2s.agentDescription),
        effective_config: Boolean(a2s.effectiveConfig),
        remote_config_status: rcs
            ? {
                  status: enumName('RemoteConfigStatuses', rcs.status),
                  hash: hex(rcs.lastRemoteConfigHash),
                  error_message: rcs.errorMessage,
              }
            : null,
        health: Boolean(a2s.health),
        agent_disconnect: Boolean(a2s.agentDisconnect),
    };
}

function describeS2A(s2a, ownUid) {
    const rc = s2a.remoteConfig ? {hash: hex(s2a.remoteConfig.configHash), files: filesOf(s2a.remoteConfig.config)} : null;
    return {
        instance_uid: uidStr(s2a.instanceUid),
        uid_matches: Boolean(sameBytes(s2a.instanceUid, ownUid)),
        flags: s2a.flags,
        capabilities: s2a.capabilities,
        remote_config_hash: rc ? rc.hash : null,
        remote_config: rc,
        has_command: Boolean(s2a.command),
        command_type: s2a.command ? enumName('CommandType', s2a.command.type) : null,
        error: null, // error responses never reach here: the client treats them as send failures
        has_connection_settings: Boolean(s2a.connectionSettings),
        heartbeat_interval_seconds: s2a.connectionSettings?.opamp ? s2a.connectionSettings.opamp.heartbeatIntervalSeconds : null,
        has_packages_available: Boolean(s2a.packagesAvailable),
        new_instance_uid: s2a.agentIdentification ? uidStr(s2a.agentIdentification.newInstanceUid) : null,
    };
}

// ---------------------------------------------------------------- the client
const headers = {};
for (const h of args.header ?? []) {
    const i = h.indexOf(':');
    if (i < 0) fail(`--header must be 'Name: value', got ${JSON.stringify(h)}`);
    headers[h.slice(0, i).trim()] = h.slice(i + 1).trim();
}
if (args['auth-header']) headers['Authorization'] = args['auth-header'];

const capabilities = args['no-remote-config']
    ? 0n
    : BigInt(AgentCapabilities.AgentCapabilities_AcceptsRemoteConfig | AgentCapabilities.AgentCapabilities_ReportsRemoteConfig);

let lastConfig = null; // AgentRemoteConfig handed to onMessage
let lastReported = null; // {hash, status, error} we passed to setRemoteConfigStatus

let client;
try {
    client = createOpAMPClient({
        log,
        endpoint: args.endpoint,
        headers,
        instanceUid: args['instance-uid'],
        capabilities,
        heartbeatIntervalSeconds: heartbeatSeconds,
        diagEnabled: true, // publishes every exchange on diagnostics channels (used for `sent`/`message`/`error`)
        onMessage: ({remoteConfig}) => {
            if (!remoteConfig) return;
            lastConfig = remoteConfig;
            emit({
                event: 'remote_config',
                hash: hex(remoteConfig.configHash),
                files: filesOf(remoteConfig.config),
                decode_error: null,
            });
        },
    });
} catch (err) {
    fail(`createOpAMPClient failed: ${err.message}`);
}
client.setAgentDescription({
    identifyingAttributes: {'service.name': args['service-name']},
    nonIdentifyingAttributes: {
        'host.name': hostname(),
        'os.type': osType().toLowerCase(),
        'telemetry.sdk.language': 'nodejs',
    },
});

// The client's diagnostics do not carry the HTTP response, so it is read from undici's own
// channels: the client sends one request at a time, so the last response seen is this send's.
let lastResponse = null;
subscribe('undici:request:create', () => {
    lastResponse = null;
});
subscribe('undici:request:headers', ({response}) => {
    const headers = {};
    const raw = response.headers ?? [];
    for (let i = 0; i + 1 < raw.length; i += 2) {
        headers[String(raw[i]).toLowerCase()] = String(raw[i + 1]);
    }
    lastResponse = {status: response.statusCode, contentType: headers['content-type'] ?? null};
});
const responseFields = () => ({
    http_status: lastResponse ? lastResponse.status : null,
    response_content_type: lastResponse ? lastResponse.contentType : null,
});

subscribe(DIAG_CH_SEND_SUCCESS, ({a2s, s2a}) => {
    emit({event: 'sent', ok: true, ...describeA2S(a2s), ...responseFields()});
    emit({
        event: 'message',
        // onMessage is only called when the message carries a remote config (and the uid matches).
        callback: s2a.remoteConfig && sameBytes(s2a.instanceUid, client.getInstanceUid()) && capabilities ? 'onMessage' : null,
        ...describeS2A(s2a, a2s.instanceUid),
    });
});
subscribe(DIAG_CH_SEND_FAIL, ({a2s, err, retryAfterMs}) => {
    const message = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
    emit({event: 'sent', ok: false, ...describeA2S(a2s), ...responseFields(), error: message});
    const m = /^ServerErrorResponse (\w+)/.exec(message);
    emit({
        event: 'error',
        source: m ? 'server' : 'client',
        message,
        ...(m ? {error_type: m[1]} : {}),
        retry_after_ms: retryAfterMs ?? null,
    });
});

// ---------------------------------------------------------------- commands
function cmdApply(cmd) {
    const statusName = String(cmd.status ?? 'APPLIED').toUpperCase();
    const status = RemoteConfigStatuses[`RemoteConfigStatuses_${statusName}`];
    if (status === undefined) {
        emit({event: 'error', source: 'driver', message: `apply: unknown status ${JSON.stringify(statusName)}`});
        return;
    }
    let hash;
    if (cmd.hash) hash = new Uint8Array(Buffer.from(cmd.hash, 'hex'));
    else if (lastConfig) hash = lastConfig.configHash;
    else {
        emit({event: 'error', source: 'driver', message: 'apply: no remote config received yet'});
        return;
    }
    const error = String(cmd.error ?? '');
    try {
        client.setRemoteConfigStatus({lastRemoteConfigHash: hash, status, errorMessage: error});
    } catch (err) {
        emit({event: 'error', source: 'client', message: `setRemoteConfigStatus: ${err.message}`});
        return;
    }
    const queued = !(lastReported && lastReported.hash === hex(hash) && lastReported.status === status && lastReported.error === error);
    lastReported = {hash: hex(hash), status, error};
    emit({event: 'ack', cmd: 'apply', status: statusName, hash: hex(hash), queued});
}

let stopping = false;
async function stop() {
    if (stopping) return;
    stopping = true;
    try {
        // shutdown() only cancels the next scheduled send and closes the HTTP client (waiting for an
        // in-flight request); 0.5.0 never sends AgentToServer.agent_disconnect.
        await client.shutdown();
    } catch (err) {
        emit({event: 'error', source: 'client', message: `shutdown: ${err.message}`});
    }
    emit({event: 'stopped', agent_disconnect_sent: false});
    process.exit(0);
}

function handleLine(line) {
    line = line.trim();
    if (!line) return;
    let cmd;
    try {
        cmd = JSON.parse(line);
        if (typeof cmd !== 'object' || cmd === null || Array.isArray(cmd)) throw new Error('not a JSON object');
    } catch (err) {
        emit({event: 'error', source: 'driver', message: `bad command line ${JSON.stringify(line)}: ${err.message}`});
        return;
    }
    switch (cmd.cmd) {
        case 'stop':
            stop();
            break;
        case 'apply':
            cmdApply(cmd);
            break;
        case 'health':
            emit({
                event: 'unsupported',
                cmd: 'health',
                reason: '@elastic/opamp-client-node 0.5.0 has no health API (ReportsHealth is rejected as unsupported)',
            });
            break;
        default:
            emit({event: 'unsupported', cmd: cmd.cmd ?? null});
    }
}

process.on('SIGTERM', stop);
process.on('SIGINT', stop);

emit({
    event: 'started',
    instance_uid: uidStr(client.getInstanceUid()),
    client: 'node',
    client_package: '@elastic/opamp-client-node',
    client_version: clientVersion,
    capabilities: client._capabilities, // the normalised bitmask (always-on ReportsStatus|ReportsHeartbeat added)
    heartbeat_seconds: heartbeatSeconds,
    pid: process.pid,
});
client.start();

const rl = createInterface({input: process.stdin, terminal: false});
rl.on('line', (line) => {
    if (!stopping) handleLine(line);
});
rl.on('close', () => stop());
