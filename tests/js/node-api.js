// A Node http program that uses what examples/hello-js/node-http.js provides beyond hello.js:
// the request's method, URL, headers and body, and the response's status, headers and writes.
// tests/all/examples.rs builds it with the example's build.mjs and calls it.
const http = require('http');

http.createServer((req, res) => {
  let body = '';
  req.setEncoding('utf8');
  req.on('data', (chunk) => {
    body += chunk;
  });
  req.on('end', () => {
    res.setHeader('X-Method', req.method);
    res.setHeader('Content-Type', 'text/plain');
    if (req.method === 'POST') {
      res.writeHead(201, { 'X-Agent': req.headers['user-agent'] ?? 'none' });
    }
    res.write(`${req.method} ${req.url} ${req.httpVersion}`);
    res.end(body ? ` ${body}` : '');
  });
}).listen(8000);
