// A minimal agentbus agent in Node.js, written from docs/PROTOCOL.md (wire protocol version 1).
//
// It registers (announce, then waits for announce_result), heartbeats with its load, status and
// epoch, answers requests of type `ping` with their payload (an `unknown_type` error reply for
// any other type), reads its inbox and its role's queue through the consumer group `agent`, takes
// over what a previous instance left pending, re-announces when told to, and on SIGTERM/SIGINT
// sends a `draining` heartbeat, leaves, and exits 0. Every Redis command is written as the page
// writes it (sendCommand), so this file can be read side by side with the page.
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { createClient } from 'redis';

// -- settings: the AGENTBUS_* variables the Python SDK reads (times in seconds) ----------------
const env = process.env;
const ms = (name, seconds) => Math.round(1000 * Number(env[name] ?? seconds));
const cfg = {
  url: env.AGENTBUS_REDIS_URL ?? 'redis://127.0.0.1:6379/0',
  ns: env.AGENTBUS_NAMESPACE ?? 'agentbus',
  name: env.AGENTBUS_NAME ?? 'node-echo-1',
  role: env.AGENTBUS_ROLE ?? 'echo',
  heartbeatMs: ms('AGENTBUS_HEARTBEAT_INTERVAL', 1),
  ttlMs: ms('AGENTBUS_TTL', 3),
  announceMs: ms('AGENTBUS_ANNOUNCE_TIMEOUT', 5),
  nameWaitMs: ms('AGENTBUS_NAME_WAIT', 0),
  claimMs: ms('AGENTBUS_CLAIM_INTERVAL', 1),
  maxDeliveries: Number(env.AGENTBUS_MAX_DELIVERIES ?? 5),
};
const newId = () => randomBytes(13).toString('hex');
const instanceId = newId(); // new each run; never reused after a leave

// -- keys (PROTOCOL.md, "Keys") ----------------------------------------------------------------
const R = `${cfg.ns}:{registry}`;
const key = {
  control: `${R}:control`,
  inbox: `${cfg.ns}:agent:{${cfg.name}}:inbox`,
  replies: `${cfg.ns}:agent:{${cfg.name}}:replies:${instanceId}`,
  queue: `${cfg.ns}:role:{${cfg.role}}:queue`,
  deadletter: `${cfg.ns}:deadletter`,
  broadcast: [`${cfg.ns}:broadcast`, `${cfg.ns}:broadcast:role:${cfg.role}`],
};
const GROUP = 'agent';
const CONTROL_MAXLEN = '300000';
const DEADLETTER_MAXLEN = '100000';

// -- what this agent does: message type -> handler (the result is the reply's payload) ------
const handlers = { ping: async (msg) => msg.payload };

const card = {
  name: cfg.name, role: cfg.role, version: '0.1.0', capabilities: ['ping'],
  description: 'echo agent in Node.js (examples/node)', host: hostname().slice(0, 255),
  pid: process.pid, max_concurrency: 1,
};
let status = 'ready';
let load = 0; // work items in progress (an integer)
let epoch = null; // the registration's epoch, from announce_result
let leaseUntil = 0; // handle nothing after this (performance.now() ms): see "Fencing"
let mustAnnounce = false;
let serving = true; // consumer and heartbeats run
let replying = true; // the reply-list reader runs (it outlives `serving`, for leave_result)
let wake = () => {};
const waiting = new Map(); // correlation id -> resolve, for announce_result / leave_result

const log = (text) => console.log(`${cfg.name}: ${text}`);
const sleep = (t) => new Promise((resolve) => setTimeout(resolve, t));
const nap = (t) => new Promise((resolve) => { wake = resolve; setTimeout(resolve, t); });
const leased = () => performance.now() < leaseUntil;

// -- the envelope (PROTOCOL.md, "The envelope") ------------------------------------------------
const JSON_FIELDS = new Set(['payload', 'headers', 'error']);
const now = () => new Date().toISOString(); // ISO-8601 UTC, milliseconds, "Z"
// A time without a zone is UTC on the wire (JavaScript would read it as local time).
const parseTime = (t) => Date.parse(/(Z|[+-]\d\d:?\d\d)$/i.test(t) ? t : `${t}Z`);

function envelope(kind, type, fields) {
  return { v: 1, id: newId(), kind, type, sender: cfg.name, sent_at: now(), ...fields };
}

// In streams an envelope is flat string fields; payload, headers and error hold JSON.
function toFields(msg) {
  const out = [];
  for (const [k, v] of Object.entries(msg)) {
    if (v === undefined || v === null) continue;
    out.push(k, JSON_FIELDS.has(k) ? JSON.stringify(v) : String(v));
  }
  return out;
}

function fromFields(entryId, flat) {
  // the by-hand defaults: id and sent_at from the stream entry id (<ms>-<seq>)
  const sentAt = new Date(Number(entryId.split('-')[0])).toISOString();
  const msg = { v: 1, id: entryId, kind: 'send', sender: 'anonymous', sent_at: sentAt };
  for (let i = 0; i < flat.length; i += 2) {
    const [k, v] = [flat[i], flat[i + 1]];
    msg[k] = JSON_FIELDS.has(k) ? JSON.parse(v) : k === 'v' ? Number(v) : v;
  }
  if (!msg.type) throw new Error('no type field');
  return msg;
}

// -- Redis: one connection for commands, one per blocking reader, one for pub/sub ------------
const connect = async (client) => client.on('error', (e) => log(`redis: ${e.message}`)).connect();
const cmd = await connect(createClient({ url: cfg.url }));
const reader = await connect(cmd.duplicate()); // XREADGROUP ... BLOCK
const replyReader = await connect(cmd.duplicate()); // BRPOP of the reply list
const sub = await connect(cmd.duplicate()); // broadcasts

// -- control plane -------------------------------------------------------------------------
async function control(type, payload, expectReply) {
  const msg = envelope('control', type, { payload });
  let answer = null;
  if (expectReply) {
    msg.reply_to = key.replies;
    msg.deadline = new Date(Date.now() + cfg.announceMs).toISOString();
    answer = new Promise((resolve) => waiting.set(msg.id, resolve));
  }
  await cmd.sendCommand(
    ['XADD', key.control, 'MAXLEN', '~', CONTROL_MAXLEN, '*', ...toFields(msg)]);
  if (!answer) return null;
  const reply = await Promise.race([answer, sleep(cfg.announceMs).then(() => null)]);
  waiting.delete(msg.id);
  return reply;
}

async function announce() {
  const giveUp = Date.now() + cfg.nameWaitMs;
  for (let stale = 0; ; ) {
    const sent = performance.now();
    const reply = await control('announce', {
      card, instance_id: instanceId, status, load, heartbeat_ms: cfg.heartbeatMs, ttl_ms: cfg.ttlMs,
    }, true);
    if (!reply) throw new Error(`no coordinator answered within ${cfg.announceMs} ms`);
    if (!reply.error) {
      epoch = reply.payload.epoch;
      leaseUntil = sent + cfg.ttlMs; // the lease runs from when the announce was sent
      return sent;
    }
    const { code, description } = reply.error;
    if (code === 'stale' && ++stale < 3) continue; // applied after we expired: again at once
    if (code === 'name_taken' && Date.now() < giveUp) { await sleep(cfg.heartbeatMs); continue; }
    throw Object.assign(new Error(`announce refused [${code}]: ${description}`), { code });
  }
}

const heartbeat = () =>
  control('heartbeat', { instance_id: instanceId, load, status, epoch }, false);

async function heartbeats(lastSent) {
  while (serving) {
    await nap(cfg.heartbeatMs);
    if (!serving) return;
    const sent = performance.now();
    const announcing = mustAnnounce || sent - lastSent > cfg.ttlMs; // told to, or stalled
    try {
      if (announcing) {
        mustAnnounce = false;
        await announce();
        log(`re-announced (epoch ${epoch})`);
      } else {
        await heartbeat();
        leaseUntil = sent + cfg.ttlMs;
      }
      lastSent = sent;
    } catch (e) {
      if (e.code === 'name_taken') return lose(e.message); // someone registered it meanwhile
      log(`${announcing ? 're-announce' : 'heartbeat'} failed (${e.message}); retrying`);
      mustAnnounce ||= announcing;
    }
  }
}

function onReannounce(p) {
  if (p?.instance_id !== instanceId) return;
  if (p.reason === 'name_lost') return lose(`instance ${p.holder} holds the name now`);
  log('the coordinator asks for a re-announce');
  leaseUntil = 0; // the registry does not hold us: handle nothing until it does again
  mustAnnounce = true;
  wake();
}

function lose(why) {
  log(`lost the name for good: ${why}; stopping`);
  serving = false;
  leaseUntil = 0;
  close(1);
}

async function readReplies() { // announce_result, leave_result and reannounce arrive here
  while (replying) {
    let popped;
    try { popped = await replyReader.sendCommand(['BRPOP', key.replies, '1']); } catch (e) {
      if (replying) { log(`reading replies failed (${e.message})`); await sleep(100); }
      continue;
    }
    if (!popped) continue;
    let msg;
    try { msg = JSON.parse(popped[1]); } catch (e) {
      const why = `not JSON: ${e.message}`;
      await deadLetter(key.replies, '', ['data', popped[1]], 'undecodable', why);
      continue;
    }
    if (waiting.has(msg.correlation_id)) waiting.get(msg.correlation_id)(msg);
    else if (msg.type === 'reannounce') onReannounce(msg.payload);
  }
}

// -- data plane ----------------------------------------------------------------------------
async function deadLetter(source, entryId, flat, code, reason) {
  log(`dead-lettering ${entryId || 'an entry'} of ${source} [${code}]: ${reason}`);
  const fields = ['reason', reason, 'code', code, 'source', source, 'source_id', entryId,
    'failed_at', now()];
  for (let i = 0; i < flat.length; i += 2) fields.push(`orig.${flat[i]}`, flat[i + 1]);
  const tx = cmd.multi()
    .addCommand(['XADD', key.deadletter, 'MAXLEN', '~', DEADLETTER_MAXLEN, '*', ...fields]);
  if (entryId) tx.addCommand(['XACK', source, GROUP, entryId]);
  await tx.exec();
}

async function reply(stream, entryId, req, result) {
  const to = req.reply_to ?? '';
  if (!to.startsWith(`${cfg.ns}:`) || !to.includes(':replies:')) { // never write elsewhere
    return cmd.sendCommand(['XACK', stream, GROUP, entryId]);
  }
  const answer = envelope('reply', req.type, {
    target: req.sender, correlation_id: req.id, headers: req.headers, ...result,
  });
  const linger = 60000 + (req.deadline ? Math.max(0, parseTime(req.deadline) - Date.now()) : 0);
  await cmd.multi()
    .addCommand(['LPUSH', to, JSON.stringify(answer)])
    .addCommand(['PEXPIRE', to, String(linger)])
    .addCommand(['XACK', stream, GROUP, entryId])
    .exec();
}

async function handle(stream, entryId, flat, deliveries) {
  const dead = (code, reason) => deadLetter(stream, entryId, flat, code, reason);
  let msg;
  try { msg = fromFields(entryId, flat); } catch (e) {
    return dead('undecodable', `undecodable entry: ${e.message}`);
  }
  if (msg.v !== 1) return dead('unsupported_version', `unsupported envelope version ${msg.v}`);
  if (deliveries > cfg.maxDeliveries) return dead('max_deliveries', `delivered ${deliveries}x`);
  if (msg.deadline && parseTime(msg.deadline) <= Date.now()) {
    return dead('deadline_exceeded', `deadline ${msg.deadline} passed before it was handled`);
  }
  const handler = handlers[msg.type];
  const unknown = `no handler for message type '${msg.type}'`;
  if (msg.kind === 'request') {
    let result;
    if (!handler) {
      result = { error: { code: 'unknown_type', description: unknown,
        details: { known: Object.keys(handlers) } } };
    } else {
      try { result = { payload: await handler(msg) }; } catch (e) {
        result = { error: { code: 'handler_error', description: String(e.message ?? e),
          details: { exception: e.name } } };
      }
    }
    return reply(stream, entryId, msg, result);
  }
  if (!handler) return dead('unknown_type', unknown);
  try { await handler(msg); } catch (e) { // left pending: a claim redelivers it after the TTL
    return log(`handler for ${msg.type} failed: ${e.message}`);
  }
  await cmd.sendCommand(['XACK', stream, GROUP, entryId]);
}

async function take(stream, entryId, flat, deliveries) {
  if (!leased()) return; // lease lapsed: leave it pending; it is claimed once idle for a TTL
  load += 1;
  try { await handle(stream, entryId, flat, deliveries); } finally { load -= 1; }
}

async function ensureGroups() {
  for (const stream of [key.inbox, key.queue]) {
    await cmd.sendCommand(['XGROUP', 'CREATE', stream, GROUP, '0', 'MKSTREAM']).catch((e) => {
      if (!e.message.startsWith('BUSYGROUP')) throw e;
    });
  }
}

// Take over entries pending longer than minIdle ms (0 on start: what our previous instance held).
async function claim(stream, minIdle) {
  let cursor = '0-0';
  do {
    const [next, entries] = await cmd.sendCommand(
      ['XAUTOCLAIM', stream, GROUP, instanceId, String(minIdle), cursor, 'COUNT', '10']);
    cursor = next;
    for (const [entryId, flat] of entries) {
      if (!flat) continue; // trimmed meanwhile
      const [[, , , count]] = await cmd.sendCommand(
        ['XPENDING', stream, GROUP, entryId, entryId, '1']); // [[id, consumer, idle, deliveries]]
      await take(stream, entryId, flat, Number(count));
    }
  } while (cursor !== '0-0' && serving);
}

const streamsOf = (r) => (!r ? [] : Array.isArray(r) ? r : Object.entries(r)); // RESP2 or RESP3

async function consume() {
  await ensureGroups();
  await claim(key.inbox, 0);
  let nextClaim = Date.now() + cfg.claimMs;
  while (serving) {
    try {
      if (Date.now() >= nextClaim) {
        for (const stream of [key.inbox, key.queue]) await claim(stream, cfg.ttlMs);
        nextClaim = Date.now() + cfg.claimMs;
      }
      const block = String(Math.max(1, Math.min(2000, nextClaim - Date.now())));
      const got = await reader.sendCommand(['XREADGROUP', 'GROUP', GROUP, instanceId, 'COUNT', '1',
        'BLOCK', block, 'STREAMS', key.inbox, key.queue, '>', '>']);
      for (const [stream, entries] of streamsOf(got)) {
        for (const [entryId, flat] of entries) await take(stream, entryId, flat, 1);
      }
    } catch (e) {
      if (!serving) return;
      log(`reading failed (${e.message}); retrying`);
      // NOGROUP: Redis lost its data; UNBLOCKED: a stream was deleted while we were blocked on it.
      if (/^(NOGROUP|UNBLOCKED)/.test(e.message)) await ensureGroups().catch(() => {});
      await sleep(100);
    }
  }
}

async function onBroadcast(raw) { // no ack, no reply; unknown types are ignored
  let msg;
  try { msg = JSON.parse(raw); } catch { return log('ignoring a broadcast that is not JSON'); }
  if (!handlers[msg.type] || !leased()) return;
  try { await handlers[msg.type](msg); } catch (e) { log(`broadcast handler: ${e.message}`); }
}

// -- lifecycle -----------------------------------------------------------------------------
async function close(code) {
  replying = false;
  for (const client of [sub, reader, replyReader, cmd]) client.destroy();
  process.exit(code);
}

let stopping = null;
async function shutdown(signal) {
  log(`${signal}: draining, then leaving`);
  status = 'draining';
  await heartbeat().catch((e) => log(`draining heartbeat failed: ${e.message}`));
  serving = false;
  wake();
  await Promise.all([consuming, beating]); // the message in hand is finished and answered
  const answer = await control('leave', { instance_id: instanceId, reason: 'shutdown' }, true)
    .catch((e) => log(`leave failed: ${e.message}`));
  log(answer?.payload?.removed ? 'left the bus' : 'leave not confirmed');
  await close(0);
}
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => { stopping ??= shutdown(signal); });
}

readReplies(); // the reply list is read before anything that expects an answer is sent
let beating;
let consuming;
try {
  const sent = await announce();
  if (stopping) await stopping; // a signal came while announcing: shutdown() leaves and exits
  log(`ready (role ${cfg.role}, instance ${instanceId}, epoch ${epoch})`);
  await sub.subscribe(key.broadcast, onBroadcast);
  beating = heartbeats(sent);
  consuming = consume();
} catch (e) {
  log(`could not register: ${e.message}`);
  await close(1);
}
