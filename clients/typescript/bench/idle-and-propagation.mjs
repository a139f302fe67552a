#!/usr/bin/env node
// Issue 22's client measurements for the TypeScript/Node client, against the real server
// (started as the integration tests start it: IMPRINT_SERVER_BIN, IMPRINT_TEST_PG_URL):
//   1. idle cost: one client subscribed to TOPICS topics (default 100), after warm-up,
//      CPU time used over IDLE_S seconds (default 60) and its RSS and heap;
//   2. propagation: ROUNDS publishes (default 30) to one of those topics, each timed from
//      just before the publish request to the subscription's `change` event.
// Prints one JSON object. Needs `npm run build` first.
//   node bench/idle-and-propagation.mjs
import { Client, silentLogger } from "../dist/esm/index.js";
import { Server, unavailable } from "../test/server.mjs";

const TOPICS = Number(process.env.TOPICS ?? 100);
const IDLE_S = Number(process.env.IDLE_S ?? 60);
const ROUNDS = Number(process.env.ROUNDS ?? 30);

const why = unavailable();
if (why) {
  console.error(`cannot run: ${why}`);
  process.exit(2);
}
const server = await Server.start();
const pct = (xs, p) => xs[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))];
try {
  const topics = [];
  for (let i = 0; i < TOPICS; i++) {
    const t = await server.topic("bench");
    await server.publish(t, { topic: i, v: 1 });
    topics.push(t);
  }
  const client = new Client({ url: server.url, instance: "ts-bench", logger: silentLogger });
  const subs = await Promise.all(topics.map((t) => client.subscribe(t, { default: null })));
  const held = subs.filter((s) => s.version === 1).length;
  globalThis.gc?.();
  await new Promise((r) => setTimeout(r, 5000)); // warm-up: the first long poll is open
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  await new Promise((r) => setTimeout(r, IDLE_S * 1000));
  const cpu = process.cpuUsage(cpu0);
  const wall = Number(process.hrtime.bigint() - t0) / 1e9;
  const mem = process.memoryUsage();
  const idle = {
    topics: TOPICS,
    held_at_start: held,
    seconds: Math.round(wall),
    cpu_ms: Math.round((cpu.user + cpu.system) / 1000),
    cpu_percent: Number((((cpu.user + cpu.system) / 1e6 / wall) * 100).toFixed(3)),
    rss_mib: Number((mem.rss / 2 ** 20).toFixed(1)),
    heap_used_mib: Number((mem.heapUsed / 2 ** 20).toFixed(1)),
  };
  const sub = subs[0];
  const times = [];
  for (let i = 0; i < ROUNDS; i++) {
    const changed = sub.nextChange(30000);
    const start = process.hrtime.bigint();
    await server.publish(topics[0], { topic: 0, v: i + 2 });
    await changed;
    times.push(Number(process.hrtime.bigint() - start) / 1e6);
    await new Promise((r) => setTimeout(r, 100));
  }
  times.sort((a, b) => a - b);
  const propagation = {
    rounds: ROUNDS,
    p50_ms: Number(pct(times, 50).toFixed(1)),
    p90_ms: Number(pct(times, 90).toFixed(1)),
    max_ms: Number(times.at(-1).toFixed(1)),
  };
  await client.close();
  console.log(JSON.stringify({ client: "typescript", node: process.version, idle, propagation }, null, 2));
} finally {
  await server.stop();
}
