// A shoal worker in JavaScript (NATS.js v3), written from docs/agents.md section 3 alone.
//
// It serves the capabilities in SHOAL_CAPABILITIES (default "shout"): a task's input
// {"text": "..."} is answered with {"text": "...".toUpperCase()}. Before answering it
// reports one model call (model: the manifest's first, else "offline-small"; tokens from the
// text's length) so that the core prices the session from its own table.
//
// Run it under a supervisor as a fleet spec's `command:` agent, or by hand with an
// enrolled identity (`shoal auth enroll FLEET AGENT --capability shout --instance ID`):
//   NATS_URL=nats://127.0.0.1:4222 NATS_CREDS=w.creds SHOAL_FLEET=docs SHOAL_AGENT=shouter \
//   SHOAL_INSTANCE=ID node worker.mjs
//
// Lifecycle (section 3): register (agent.started) -> heartbeat presence -> pull tasks and
// report events -> on SIGTERM drain and send agent.stopped; on a kill of this instance, its
// fleet or everything, release what runs and exit 0 (a killed instance id is never trusted
// again: a new process registers under a new id).
// Exit codes: 0 stopped or killed, 1 connection lost or a fatal error, 2 bad configuration.

import { readFileSync } from "node:fs";
import { hostname } from "node:os";
import { randomBytes, randomUUID } from "node:crypto";
import { connect, credsAuthenticator, headers } from "@nats-io/transport-node";
import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";

const env = process.env;
const enc = new TextEncoder();
const dec = new TextDecoder();

function need(name) {
  const value = env[name];
  if (!value) {
    console.error(`error: ${name} is not set`);
    process.exit(2);
  }
  return value;
}

const me = {
  fleet: need("SHOAL_FLEET"),
  agent: need("SHOAL_AGENT"),
  instance: env.SHOAL_INSTANCE || randomUUID().replaceAll("-", ""),
  version: env.SHOAL_VERSION || "1",
};
const prefix = env.SHOAL_PREFIX || "shoal";
const P = prefix.toUpperCase().replaceAll("-", "_");
const capabilities = (env.SHOAL_CAPABILITIES || "shout").split(",").filter(Boolean);
const concurrency = Math.max(1, Number(env.SHOAL_CONCURRENCY || "1"));
const presenceTtlS = Number(env.SHOAL_PRESENCE_TTL_S || "10");
const source = `shoal://${me.fleet}/${me.agent}/${me.instance}`;
const startedAt = new Date().toISOString();

function manifestModel() {
  if (!env.SHOAL_MANIFEST) return "offline-small";
  const manifest = JSON.parse(readFileSync(env.SHOAL_MANIFEST, "utf8"));
  return (manifest.models && manifest.models[0]) || "offline-small";
}
const model = manifestModel();

// The reply inbox these credentials may subscribe to: _INBOX.<user public key> (the `sub`
// claim of the user JWT in the creds file).
function ownInbox(credsText) {
  const jwt = credsText.split("\n").map((l) => l.trim()).find((l) => l.split(".").length === 3);
  const claims = JSON.parse(Buffer.from(jwt.split(".")[1], "base64url").toString());
  return `_INBOX.${claims.sub}`;
}

const options = { servers: env.NATS_URL || "nats://127.0.0.1:4222", name: source };
if (env.NATS_CREDS) {
  const creds = readFileSync(env.NATS_CREDS, "utf8");
  options.authenticator = credsAuthenticator(enc.encode(creds));
  options.inboxPrefix = ownInbox(creds);
}

const nc = await connect(options);
const js = jetstream(nc, { timeout: 5000 });
const kvm = new Kvm(nc);
const presence = await kvm.open(`${P}_presence`);
const killBucket = await kvm.open(`${P}_kill`);

const running = new Map(); // iid -> {task, msg, attempt, capability}
let stopping = null; // "drain" | "kill"
let beating = null; // the heartbeat timer
let loops = []; // one pull loop per capability and slot of concurrency

// -- events -------------------------------------------------------------------------------

// A new span id under the task's trace: the worker's work joins the goal's trace.
function childTraceparent(parent) {
  const m = /^00-([0-9a-f]{32})-[0-9a-f]{16}-([0-9a-f]{2})$/.exec(parent || "");
  return m ? `00-${m[1]}-${randomBytes(8).toString("hex")}-${m[2]}` : null;
}

function envelope(session, type, data) {
  const ev = {
    specversion: "1.0",
    id: randomUUID(),
    source,
    type,
    time: new Date().toISOString(),
    datacontenttype: "application/json",
    iid: session.iid,
    fleet: me.fleet,
    agent: me.agent,
    instance: me.instance,
    data,
  };
  for (const key of ["gid", "parentiid", "principal"]) {
    if (session[key]) ev[key] = session[key];
  }
  if (session.traceparent) ev.traceparent = session.traceparent;
  return ev;
}

async function report(session, type, data) {
  const ev = envelope(session, type, data);
  const short = type.replace(/^shoal\./, "");
  const subject =
    `${prefix}.events.${ev.gid || "_"}.${ev.iid}.${short}` +
    `.agent.${me.fleet}.${me.agent}.${me.instance}`;
  const h = headers();
  h.set("content-type", "application/cloudevents+json");
  if (ev.traceparent) h.set("traceparent", ev.traceparent);
  await js.publish(subject, JSON.stringify(ev), { msgID: ev.id, headers: h });
}

const lifecycle = { iid: me.instance }; // agent.* events: the instance's own session

// -- presence -----------------------------------------------------------------------------

async function heartbeat() {
  const doc = {
    instance: me.instance,
    fleet: me.fleet,
    agent: me.agent,
    version: me.version,
    host: hostname(),
    pid: process.pid,
    started_at: startedAt,
    heartbeat_at: new Date().toISOString(),
    capabilities,
    current_sessions: [...running.keys()],
  };
  if (env.SHOAL_SUPERVISOR) doc.supervisor = env.SHOAL_SUPERVISOR;
  if (env.SHOAL_SLOT) doc.slot = Number(env.SHOAL_SLOT);
  await presence.put(`${me.fleet}.${me.agent}.${me.instance}`, JSON.stringify(doc));
}

// -- kill switches ------------------------------------------------------------------------

const kills = new Map(); // key -> switch document
const stopKeys = ["all", `fleet.${me.fleet}`, `instance.${me.instance}`];

function coveringKill(session) {
  const keys = [
    ...stopKeys,
    `session.${session.iid}`,
    session.parentiid && `session.${session.parentiid}`,
    session.gid && `goal.${session.gid}`,
    session.principal && `principal.${session.principal}`,
  ].filter(Boolean);
  return keys.find((k) => kills.has(k));
}

async function watchKills() {
  const watch = await killBucket.watch({ key: ">" });
  for await (const e of watch) {
    if (e.operation === "PUT") {
      kills.set(e.key, e.value.length ? JSON.parse(dec.decode(e.value)) : {});
      if (stopKeys.includes(e.key) && !stopping) void killed(e.key);
    } else {
      kills.delete(e.key);
    }
  }
}

// Killed (instance, fleet or all): the worker stops, the work is released to another
// instance (task.failed Killed, final false, nak without delay), and the process exits.
// The operator's agent.killed is the kill's record; an instance's credentials may not
// publish kills (docs/agents.md section 3, "After a kill").
async function killed(key) {
  if (stopping === "kill") return;
  stopping = "kill";
  const kill = kills.get(key) || {};
  try {
    for (const work of [...running.values()]) {
      await settle(work, `killed by ${kill.by || "?"}: ${kill.reason || ""}`, "Killed", false);
    }
  } catch (e) {
    // The warden revokes a killed identity at once: the task is redelivered after ack_wait.
    console.error(`warning: could not release the work in flight: ${e.message}`);
  }
  console.log(`killed (${key}) by ${kill.by || "?"}: ${kill.reason || ""}`);
  await shutdown(0);
}

// -- tasks --------------------------------------------------------------------------------

async function settle(work, error, errorType, final) {
  running.delete(work.task.iid);
  await report(work.task, "shoal.task.failed", {
    capability: work.capability,
    error,
    error_type: errorType,
    attempt: work.attempt,
    final,
  });
  if (final) work.msg.term();
  else work.msg.nak(errorType === "Killed" ? 0 : 1000 * 2 ** (work.attempt - 1));
}

function tokens(text) {
  return Math.ceil(text.length / 4) + 4;
}

// Is this task's completion already on the log? (A redelivery after a crash between the
// report and the ack.) An ordered consumer on the event log, filtered to the session.
async function alreadyCompleted(task) {
  try {
    const consumer = await js.consumers.get(`${P}_EVENTS`, {
      filter_subjects: [`${prefix}.events.*.${task.iid}.task.completed.>`],
    });
    const found = await consumer.next({ expires: 1000 });
    await consumer.delete().catch(() => {});
    return found !== null;
  } catch (e) {
    console.error(`warning: could not read the log for ${task.iid}: ${e.message}`);
    return false;
  }
}

async function handle(capability, msg) {
  let task;
  try {
    task = JSON.parse(dec.decode(msg.data));
    if (task.type !== "shoal.task.assigned" || !task.iid || typeof task.data?.input !== "object") {
      throw new Error("not a task.assigned event");
    }
  } catch (e) {
    const h = headers();
    h.set("Shoal-Reason", `invalid task: ${e.message}`);
    h.set("Shoal-Original-Subject", msg.subject);
    nc.publish(`${prefix}.deadletter.tasks`, msg.data, { headers: h });
    msg.term();
    return;
  }
  task.traceparent = childTraceparent(msg.headers?.get("traceparent") || task.traceparent);
  const attempt = msg.info.deliveryCount;
  const work = { task, msg, attempt, capability };
  running.set(task.iid, work);
  const began = performance.now();
  const kill = coveringKill(task);
  if (kill) {
    const stops = stopKeys.includes(kill);
    await settle(work, `killed: ${kill}`, "Killed", !stops);
    return;
  }
  if (attempt > 1 && (await alreadyCompleted(task))) {
    running.delete(task.iid);
    await msg.ackAck(); // a recorded completion wins: the previous attempt died before its ack
    return;
  }
  if (attempt > 3) {
    await settle(work, "the last attempt's instance died", "InstanceLost", true);
    return;
  }
  await report(task, "shoal.task.started", { capability, attempt });
  const text = String(task.data.input.text ?? "");
  if (!text) {
    await settle(work, "input.text is required", "InvalidTask", true);
    return;
  }
  const answer = text.toUpperCase();
  await report(task, "shoal.model.called", {
    call_id: randomUUID(),
    model,
    provider: "offline",
    input_tokens: tokens(text) + 3,
    output_tokens: tokens(answer),
    cached_tokens: 0,
    latency_ms: 0.1,
    finish_reason: "stop",
  });
  if (!running.has(task.iid)) return; // released by a kill meanwhile
  const late = coveringKill(task);
  if (late) {
    await settle(work, `killed: ${late}`, "Killed", !stopKeys.includes(late));
    return;
  }
  await report(task, "shoal.task.completed", {
    capability,
    output: { text: answer },
    attempt,
    duration_ms: performance.now() - began,
  });
  running.delete(task.iid);
  await msg.ackAck(); // report first, then ack: a redelivery finds the completion
}

// The capability's durable consumer, shared by every instance: bind to it if it exists,
// else create it with the documented config (never change an existing one).
async function taskConsumer(capability) {
  const stream = `${P}_TASKS`;
  const durable = `${me.fleet}_${capability}`;
  const jsm = await jetstreamManager(nc, { timeout: 5000 });
  try {
    await jsm.consumers.info(stream, durable);
  } catch (e) {
    if (!/not found/i.test(e.message)) throw e;
    await jsm.consumers.add(stream, {
      durable_name: durable,
      filter_subject: `${prefix}.tasks.${me.fleet}.${capability}`,
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.All,
      ack_wait: 30_000_000_000, // nanoseconds
      max_deliver: 4,
      max_ack_pending: 20000,
      max_waiting: 4096,
    });
  }
  return await js.consumers.get(stream, durable);
}

async function serve(capability) {
  const consumer = await taskConsumer(capability);
  while (!stopping) {
    if ([...kills.keys()].some((k) => stopKeys.includes(k))) break;
    const msg = await consumer.next({ expires: 2000 });
    if (msg === null) continue;
    if (stopping) {
      msg.nak(0); // taken after the decision to stop: straight back to the queue
      break;
    }
    await handle(capability, msg);
  }
}

// -- lifecycle ----------------------------------------------------------------------------

async function shutdown(code) {
  if (beating) clearInterval(beating);
  try {
    await presence.delete(`${me.fleet}.${me.agent}.${me.instance}`);
  } catch {
    // the key expires with its TTL anyway
  }
  try {
    await nc.drain();
  } catch {
    // already closed (revoked credentials): nothing left to flush
  }
  process.exit(code);
}

// The key of a kill that stops this instance, read from the bucket itself (a supervisor's
// SIGTERM for a kill may arrive before this process's own watch delivers the key).
async function stopKill() {
  for (const key of stopKeys) {
    const entry = await killBucket.get(key);
    if (entry && entry.operation === "PUT") {
      kills.set(key, entry.value.length ? JSON.parse(dec.decode(entry.value)) : {});
      return key;
    }
  }
  return null;
}

process.on("SIGTERM", () => {
  if (stopping) return;
  stopping = "drain";
  void Promise.allSettled(loops).then(async () => {
    const key = await stopKill().catch(() => null);
    if (key) {
      await killed(key); // a kill, not a drain: acknowledged as such, and exits
      return;
    }
    await report(lifecycle, "shoal.agent.stopped", { reason: "SIGTERM" });
    await shutdown(0);
  });
});
process.on("SIGINT", () => process.emit("SIGTERM"));

void nc.closed().then((err) => {
  if (stopping) return;
  console.error(`error: connection to NATS lost${err ? `: ${err.message}` : ""}`);
  process.exit(1);
});

// Registration first: the core refuses every event of an instance it never saw start.
await report(lifecycle, "shoal.agent.started", {
  version: me.version,
  capabilities,
  host: hostname(),
  pid: process.pid,
});
void watchKills().catch((e) => {
  console.error(`error: kill-switch watch failed: ${e.message}`);
  process.exit(1);
});
await heartbeat();
beating = setInterval(() => {
  heartbeat().catch((e) => console.error(`warning: heartbeat failed: ${e.message}`));
}, (presenceTtlS * 1000) / 3);
console.log(`${source} serving ${capabilities.join(", ")} (concurrency ${concurrency})`);
loops = capabilities.flatMap((c) =>
  Array.from({ length: concurrency }, () =>
    serve(c).catch((e) => {
      console.error(`error: ${c}: ${e.message}`);
      process.exit(1);
    }),
  ),
);
