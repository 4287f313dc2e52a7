// node-http.js: enough of Node's `http` module for a server program written for Node to run as
// a wasi:http component.
//
// ComponentizeJS runs a program's top-level code once, at build time, and snapshots the result.
// So `http.createServer(handler).listen(port)` only records the handler here; every request that
// wk gives the component then reaches it as a Node `req`/`resp` pair. The port the pod listens on
// is the one in the pod spec (containerPort).
//
// Requests come in by one of two front ends, which build.mjs chooses:
// - `serveFetchEvents()`: StarlingMonkey's fetch event, with its native Request and Response.
//   The cheaper of the two per request, but an instance answers only one request (wk gives
//   each request a fresh instance, and refuses wk.dev/instance-reuse).
// - the `incomingHandler` export: the wasi:http handler, called through ComponentizeJS's
//   bindings. An instance may answer request after request (wk.dev/instance-reuse).
//
// What is there: createServer / listen / on('request'); req.method, url, headers, httpVersion,
// and the body through on('data'/'end') or `for await`; resp.statusCode, setHeader, getHeader,
// removeHeader, hasHeader, getHeaders, writeHead, write, end, headersSent. A response is sent
// when `end()` is called, so an async handler works too. Anything else Node has is absent, and
// `require` of any other module names the module.

import {
  Fields,
  OutgoingBody,
  OutgoingResponse,
  ResponseOutparam,
} from 'wasi:http/types@0.2.10';
import { getEnvironment } from 'wasi:cli/environment@0.2.10';
import { exit } from 'wasi:cli/exit@0.2.10';

const encoder = new TextEncoder();
const decoder = new TextDecoder();
// Misuse that Node would throw for is logged once per kind, not at every request.
const warned = new Set();
function warnOnce(what) {
  if (!warned.has(what) && !reportedAtBuild.has(what)) {
    warned.add(what);
    console.error(`node-http: ${what}`);
  }
}

function bytes(chunk, encoding) {
  if (chunk === undefined || chunk === null) return new Uint8Array(0);
  if (chunk instanceof Uint8Array) return chunk;
  if (typeof chunk === 'string') {
    if (encoding && !/^utf-?8$/i.test(encoding)) warnOnce(`encoding ${encoding} is written as utf-8`);
    return encoder.encode(chunk);
  }
  throw new TypeError('The "chunk" argument must be of type string or an instance of Uint8Array');
}

let server = null;

// Misuse that a handler's own text shows is reported once, when the component is built, and
// not again at each request (each request may run in a fresh instance of this snapshot).
const reportedAtBuild = new Set();
function checkHandler(handler) {
  const text = Function.prototype.toString.call(handler);
  const resp = /^[^(]*\(\s*[\w$]+\s*,\s*([\w$]+)/.exec(text)?.[1];
  if (!resp) return;
  const end = text.indexOf(`${resp}.end(`);
  const head = text.indexOf(`${resp}.writeHead(`);
  if (end >= 0 && head > end) {
    const what = 'writeHead() after the response was sent is ignored (Node throws ERR_HTTP_HEADERS_SENT)';
    // At build time only stdout reaches the person building.
    console.log(`node-http: the request handler calls ${resp}.end() before ${resp}.writeHead(): ` +
      `the response is sent at end(), with the status set by then (200 by default); ${what}`);
    reportedAtBuild.add(what);
  }
}

class Server {
  constructor(handler) {
    this.listeners = handler ? [handler] : [];
    this.port = undefined;
  }
  on(event, fn) {
    if (event === 'request') this.listeners.push(fn);
    else if (event === 'listening') fn();
    return this;
  }
  listen(port, ...rest) {
    for (const handler of this.listeners) checkHandler(handler);
    if (server && server !== this) {
      warnOnce('a second server listens; requests go to the first one');
    } else {
      server = this;
    }
    this.port = port;
    const done = rest.find((a) => typeof a === 'function');
    if (done) done();
    return this;
  }
  close(done) {
    if (done) done();
    return this;
  }
  address() {
    return { address: '0.0.0.0', family: 'IPv4', port: this.port };
  }
}

// Every request pays for what its message and response objects do up front, so they do little:
// the method, URL and headers are read from the host when first asked for, and the response
// keeps no header map until a header is set.
class IncomingMessage {
  constructor(request) {
    this.request = request;
  }
  get method() {
    if (this.fields?.method === undefined) this.own().method = this.readMethod();
    return this.fields.method;
  }
  set method(value) {
    this.own().method = value;
  }
  get url() {
    if (this.fields?.url === undefined) this.own().url = this.readUrl();
    return this.fields.url;
  }
  set url(value) {
    this.own().url = value;
  }
  readMethod() {
    const method = this.request.method();
    return method.tag === 'other' ? method.val : method.tag.toUpperCase();
  }
  readUrl() {
    return this.request.pathWithQuery() ?? '/';
  }
  own() {
    return (this.fields ??= {});
  }
  // Headers are decoded when first asked for: a handler that never looks costs nothing.
  get headers() {
    return this.readHeaders().headers;
  }
  get rawHeaders() {
    return this.readHeaders().raw;
  }
  readHeaders() {
    if (!this.parsed) {
      const headers = {};
      const raw = [];
      for (const [name, value] of this.request.headers().entries()) {
        const text = decoder.decode(value);
        raw.push(name, text);
        const key = name.toLowerCase();
        headers[key] = key in headers ? `${headers[key]}, ${text}` : text;
      }
      this.parsed = { headers, raw };
    }
    return this.parsed;
  }
  setEncoding(encoding) {
    this.encoding = encoding;
    return this;
  }
  // The whole body, read from the wasi:http stream.
  bodyChunks() {
    const chunks = [];
    const body = this.request.consume();
    const stream = body.stream();
    for (;;) {
      let chunk;
      try {
        chunk = stream.blockingRead(65536n);
      } catch (e) {
        if (e?.payload?.tag === 'closed') break;
        throw e;
      }
      if (chunk.length > 0) chunks.push(chunk);
    }
    stream[Symbol.dispose]?.();
    body[Symbol.dispose]?.();
    return chunks;
  }
  on(event, fn) {
    this.events ??= { data: [], end: [] };
    if (event in this.events) {
      this.events[event].push(fn);
      if (!this.pumping) {
        this.pumping = true;
        Promise.resolve()
          .then(() => this.bodyChunks())
          .then((chunks) => {
            for (const chunk of chunks) {
              const value = this.encoding ? decoder.decode(chunk) : chunk;
              for (const f of this.events.data) f(value);
            }
            for (const f of this.events.end) f();
          });
      }
    }
    return this;
  }
  once(event, fn) {
    return this.on(event, fn);
  }
  async *[Symbol.asyncIterator]() {
    for (const chunk of await this.bodyChunks()) yield this.encoding ? decoder.decode(chunk) : chunk;
  }
}

// A request of the fetch event: StarlingMonkey's Request.
class FetchMessage extends IncomingMessage {
  readMethod() {
    return this.request.method;
  }
  readUrl() {
    // The request's URL is absolute; Node's is the path and query.
    const url = this.request.url;
    const path = url.indexOf('/', url.indexOf('//') + 2);
    return path < 0 ? '/' : url.slice(path);
  }
  readHeaders() {
    if (!this.parsed) {
      const headers = {};
      const raw = [];
      // Names come lowercased, and a repeated header's values joined with ", ".
      for (const [name, value] of this.request.headers) {
        raw.push(name, value);
        headers[name] = value;
      }
      this.parsed = { headers, raw };
    }
    return this.parsed;
  }
  bodyChunks() {
    return this.request.arrayBuffer().then((b) => (b.byteLength > 0 ? [new Uint8Array(b)] : []));
  }
}

class ServerResponse {
  constructor(finished) {
    this.chunks = [];
    this.onEnd = finished;
  }
  setHeader(name, value) {
    if (this.headersSent) {
      warnOnce(`setHeader(${JSON.stringify(name)}) after the headers were sent is ignored (Node throws ERR_HTTP_HEADERS_SENT)`);
      return this;
    }
    (this.headerMap ??= new Map()).set(String(name).toLowerCase(), [String(name), value]);
    return this;
  }
  getHeader(name) {
    return this.headerMap?.get(String(name).toLowerCase())?.[1];
  }
  hasHeader(name) {
    return this.headerMap?.has(String(name).toLowerCase()) ?? false;
  }
  removeHeader(name) {
    this.headerMap?.delete(String(name).toLowerCase());
  }
  getHeaders() {
    return Object.fromEntries([...(this.headerMap ?? [])].map(([k, [, v]]) => [k, v]));
  }
  writeHead(status, message, headers) {
    if (this.headersSent) {
      warnOnce('writeHead() after the response was sent is ignored (Node throws ERR_HTTP_HEADERS_SENT)');
      return this;
    }
    if (typeof message !== 'string') headers = message;
    this.statusCode = status;
    if (Array.isArray(headers)) {
      for (let i = 0; i + 1 < headers.length; i += 2) this.setHeader(headers[i], headers[i + 1]);
    } else if (headers) {
      for (const [k, v] of Object.entries(headers)) this.setHeader(k, v);
    }
    return this;
  }
  write(chunk, encoding, done) {
    if (this.writableEnded) {
      warnOnce('write() after end() is ignored (Node emits ERR_STREAM_WRITE_AFTER_END)');
      return false;
    }
    this.chunks.push(bytes(chunk, typeof encoding === 'string' ? encoding : undefined));
    const cb = typeof encoding === 'function' ? encoding : done;
    if (cb) queueMicrotask(cb);
    return true;
  }
  end(chunk, encoding, done) {
    if (typeof chunk === 'function') [chunk, done] = [undefined, chunk];
    if (typeof encoding === 'function') [encoding, done] = [undefined, encoding];
    if (this.writableEnded) return this;
    if (chunk !== undefined && chunk !== null) this.write(chunk, encoding);
    this.writableEnded = this.finished = this.headersSent = true;
    this.onEnd();
    if (done) queueMicrotask(done);
    return this;
  }
}

// Defaults on the prototypes: an instance gets its own property only when one is set.
Object.assign(IncomingMessage.prototype, {
  httpVersion: '1.1',
  parsed: null,
  events: null,
  encoding: null,
  pumping: false,
  fields: null,
});
Object.assign(ServerResponse.prototype, {
  statusCode: 200,
  statusMessage: '',
  headerMap: null,
  headersSent: false,
  writableEnded: false,
  finished: false,
});

// The last Content-Length sent, encoded: a program answers with the same length again and again.
let lastLength = -1;
let lastLengthBytes = null;

// Writes a finished ServerResponse into the wasi:http response outparam.
function send(resp, out) {
  let length = 0;
  const chunks = resp.chunks;
  for (let i = 0; i < chunks.length; i++) length += chunks[i].length;
  const list = [];
  const headers = resp.headerMap;
  if (headers) {
    for (const [name, value] of headers.values()) {
      for (const v of Array.isArray(value) ? value : [value]) list.push([name, encoder.encode(String(v))]);
    }
  }
  if (!headers?.has('content-length') && !headers?.has('transfer-encoding')) {
    if (length !== lastLength) {
      lastLength = length;
      lastLengthBytes = encoder.encode(String(length));
    }
    list.push(['content-length', lastLengthBytes]);
  }
  const response = new OutgoingResponse(Fields.fromList(list));
  // A new response's status is 200 already.
  if (resp.statusCode !== 200) response.setStatusCode(resp.statusCode);
  const body = response.body();
  ResponseOutparam.set(out, { tag: 'ok', val: response });
  const stream = body.write();
  for (let i = 0; i < chunks.length; i++) {
    const chunk = chunks[i];
    if (chunk.length <= 4096) {
      if (chunk.length > 0) stream.blockingWriteAndFlush(chunk);
      continue;
    }
    // blocking-write-and-flush takes at most 4096 bytes at a time.
    for (let at = 0; at < chunk.length; at += 4096) {
      stream.blockingWriteAndFlush(chunk.subarray(at, at + 4096));
    }
  }
  stream[Symbol.dispose]?.();
  OutgoingBody.finish(body, undefined);
}

function plainResponse(out, status, text) {
  const resp = new ServerResponse(() => {});
  resp.statusCode = status;
  resp.setHeader('content-type', 'text/plain; charset=utf-8');
  resp.end(text);
  send(resp, out);
}

// Runs the program's handlers on `req`. A handler that ends its response before returning is
// answered at once, by `finish(resp)`; one that ends it later gets a Promise, which the engine
// runs the event loop for. `failed(status, text)` answers when there is no handler to run or
// it threw first.
function serve(req, finish, failed) {
  if (!server || server.listeners.length === 0) {
    return failed(500, 'the program did not call http.createServer(handler).listen(port)\n');
  }
  let ended = null;
  const resp = new ServerResponse(() => ended?.());
  try {
    const listeners = server.listeners;
    for (let i = 0; i < listeners.length; i++) listeners[i](req, resp);
  } catch (e) {
    console.error(`node-http: the request handler threw: ${e?.stack ?? e}`);
    if (!resp.writableEnded) return failed(500, 'the request handler failed\n');
  }
  if (resp.writableEnded) return finish(resp);
  return new Promise((resolve) => (ended = resolve)).then(() => finish(resp));
}

export const incomingHandler = {
  handle(request, out) {
    return serve(
      new IncomingMessage(request),
      (resp) => send(resp, out),
      (status, text) => plainResponse(out, status, text),
    );
  },
};

// Statuses whose response has no body (fetch's Response refuses one).
const NO_BODY = new Set([101, 103, 204, 205, 304]);

// A finished ServerResponse as a fetch Response.
function toResponse(resp) {
  const init = { status: resp.statusCode };
  const map = resp.headerMap;
  if (map) {
    const headers = new Headers();
    for (const [name, value] of map.values()) {
      for (const v of Array.isArray(value) ? value : [value]) headers.append(name, String(v));
    }
    init.headers = headers;
  }
  if (NO_BODY.has(resp.statusCode)) return new Response(null, init);
  const chunks = resp.chunks;
  let body = chunks[0] ?? new Uint8Array(0);
  if (chunks.length > 1) {
    let length = 0;
    for (let i = 0; i < chunks.length; i++) length += chunks[i].length;
    body = new Uint8Array(length);
    for (let i = 0, at = 0; i < chunks.length; at += chunks[i].length, i++) body.set(chunks[i], at);
  }
  return new Response(body, init);
}

// Serves the program's requests through StarlingMonkey's fetch event.
export function serveFetchEvents() {
  let answered = false;
  addEventListener('fetch', (event) => {
    // StarlingMonkey cannot answer a second fetch event in one instance: the request would
    // wait until the host gives up on it. Say what to build instead, and end the instance so
    // that the host knows at once.
    if (answered) {
      console.error(
        'this build answers one request per instance; build with --reusable for instance reuse',
      );
      exit({ tag: 'err', val: undefined });
    }
    answered = true;
    event.respondWith(
      serve(new FetchMessage(event.request), toResponse, (status, text) =>
        new Response(text, { status, headers: { 'content-type': 'text/plain; charset=utf-8' } }),
      ),
    );
  });
}

const http = {
  createServer(options, handler) {
    return new Server(typeof options === 'function' ? options : handler);
  },
  Server,
  IncomingMessage,
  ServerResponse,
  METHODS: ['DELETE', 'GET', 'HEAD', 'OPTIONS', 'PATCH', 'POST', 'PUT'],
  STATUS_CODES: { 200: 'OK', 201: 'Created', 204: 'No Content', 301: 'Moved Permanently', 302: 'Found', 304: 'Not Modified', 400: 'Bad Request', 401: 'Unauthorized', 403: 'Forbidden', 404: 'Not Found', 500: 'Internal Server Error', 503: 'Service Unavailable' },
};

globalThis.require = function require(name) {
  if (name === 'http' || name === 'node:http') return http;
  throw new Error(`require(${JSON.stringify(name)}): only the http module is available in this Wasm component`);
};

// process.env reads the pod's environment at each use (build-time values would be stale).
globalThis.process = {
  get env() {
    return Object.fromEntries(getEnvironment());
  },
  argv: ['node'],
  platform: 'wasi',
};
