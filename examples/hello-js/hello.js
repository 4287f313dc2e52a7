var http = require('http');

var handleRequest = function(req, resp) {
  resp.end('Hello Kubernetes!');
  resp.writeHead(200);
};

var www = http.createServer(handleRequest);
www.listen(8000);
