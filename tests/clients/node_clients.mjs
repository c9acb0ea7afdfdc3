// node-redis (RESP2 and RESP3) and ioredis through keygate, as Node.js applications use them:
// the libraries' own handshakes (HELLO, CLIENT SETINFO, CLIENT SETNAME, ioredis's INFO ready
// check, AUTH when a password is given), data, automatic pipelining, transactions, a WATCH race,
// pub/sub and blocking pops. Run by tests/clients.rs as
// `node node_clients.mjs HOST PORT [USERNAME PASSWORD]`; any failed check throws and the exit
// status says so. Every key carries the run's own prefix, so runs never meet.

import assert from "node:assert/strict";
import { createClient } from "redis";
import Redis from "ioredis";

const [host, portText, username, password] = process.argv.slice(2);
const port = Number(portText);
const auth = password ? { username, password } : {};

// A hung check must fail the run, not hang it.
setTimeout(() => {
  console.error("node clients: no result within 60 s");
  process.exit(1);
}, 60_000).unref();

async function nodeRedis(resp) {
  const p = `nr${resp}:`;
  const options = { socket: { host, port, reconnectStrategy: false }, name: `nr${resp}`, RESP: resp, ...auth };
  const c = createClient(options);
  c.on("error", (e) => console.error(`node-redis ${resp}:`, e.message));
  await c.connect();
  assert.equal(await c.ping(), "PONG");
  assert.equal(await c.clientGetName(), `nr${resp}`);
  const info = await c.sendCommand(["CLIENT", "INFO"]);
  assert.match(String(info), new RegExp(`resp=${resp}`));
  assert.match(String(info), /lib-name=node-redis/);

  assert.equal(await c.set(p + "k", "v"), "OK");
  assert.equal(await c.get(p + "k"), "v");
  assert.equal(await c.get(p + "missing"), null);
  await c.hSet(p + "h", { a: "1", b: "2" });
  assert.deepEqual({ ...(await c.hGetAll(p + "h")) }, { a: "1", b: "2" });
  await c.zAdd(p + "z", { score: 1.5, value: "m" });
  assert.equal(Number(await c.zScore(p + "z", "m")), 1.5);

  // Commands issued in one tick go out as one pipeline.
  const sets = await Promise.all(
    Array.from({ length: 200 }, (_, i) => c.set(`${p}pipe${i}`, String(i))),
  );
  assert.ok(sets.every((r) => r === "OK"));
  const gets = await Promise.all(Array.from({ length: 200 }, (_, i) => c.get(`${p}pipe${i}`)));
  assert.deepEqual(gets, Array.from({ length: 200 }, (_, i) => String(i)));

  // A transaction.
  const tx = await c.multi().set(p + "t", "1").incr(p + "t").get(p + "t").exec();
  assert.deepEqual(tx, ["OK", 2, "2"]);

  // Pub/sub on a duplicate connection.
  const sub = c.duplicate();
  sub.on("error", (e) => console.error(`node-redis ${resp} sub:`, e.message));
  await sub.connect();
  const got = new Promise((resolve) => sub.subscribe(p + "ch", (message) => resolve(message)));
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(await c.publish(p + "ch", "hello"), 1);
  assert.equal(await got, "hello");
  await sub.unsubscribe(p + "ch");
  sub.destroy();

  // A blocking pop, woken by the first connection.
  const blocked = c.duplicate();
  blocked.on("error", (e) => console.error(`node-redis ${resp} blocked:`, e.message));
  await blocked.connect();
  const pop = blocked.blPop(p + "q", 0);
  await new Promise((r) => setTimeout(r, 100));
  await c.rPush(p + "q", "x");
  assert.deepEqual({ ...(await pop) }, { key: p + "q", element: "x" });
  blocked.destroy();
  c.destroy();
  return `node-redis RESP${resp} ok`;
}

async function ioredis() {
  const p = "io:";
  const options = {
    host,
    port,
    connectionName: "io",
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    ...auth,
  };
  // The ready check sends INFO and waits for it to say the server is loaded.
  const r = new Redis(options);
  const other = new Redis(options);
  assert.equal(await r.ping(), "PONG");
  assert.equal(await r.client("GETNAME"), "io");
  assert.equal(await r.set(p + "k", "v"), "OK");
  assert.equal(await r.get(p + "k"), "v");
  await r.hset(p + "h", { a: "1", b: "2" });
  assert.deepEqual(await r.hgetall(p + "h"), { a: "1", b: "2" });

  const piped = await r.pipeline().set(p + "a", "1").incr(p + "a").get(p + "a").exec();
  assert.deepEqual(piped, [[null, "OK"], [null, 2], [null, "2"]]);
  const tx = await r.multi().set(p + "t", "1").incr(p + "t").exec();
  assert.deepEqual(tx, [[null, "OK"], [null, 2]]);

  // A WATCH race: the other client's write aborts the transaction (EXEC's nil).
  await r.set(p + "bal", "10");
  await r.watch(p + "bal");
  await other.set(p + "bal", "99");
  assert.equal(await r.multi().set(p + "bal", "0").exec(), null);
  assert.equal(await r.get(p + "bal"), "99");

  // Pub/sub.
  const sub = new Redis(options);
  const got = new Promise((resolve) => sub.on("message", (_ch, message) => resolve(message)));
  assert.equal(await sub.subscribe(p + "ch"), 1);
  assert.equal(await r.publish(p + "ch", "hello"), 1);
  assert.equal(await got, "hello");
  sub.disconnect();

  // A blocking pop, woken by another client.
  const pop = r.blpop(p + "q", 0);
  await new Promise((res) => setTimeout(res, 100));
  await other.rpush(p + "q", "x");
  assert.deepEqual(await pop, [p + "q", "x"]);

  r.disconnect();
  other.disconnect();
  return "ioredis ok";
}

for (const run of [() => nodeRedis(2), () => nodeRedis(3), ioredis]) {
  console.log(await run());
}
process.exit(0);
