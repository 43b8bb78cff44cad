// An HTTP echo server and a load of clients without keep-alive, for
// tests/real_programs.rs. `node node_http.js serve PORT` answers each POST
// with "echo:<body length>"; `cluster PORT` does it in two workers of
// Node's cluster module, whose primary accepts each connection and passes
// it to a worker (round-robin); `node node_http.js load PORT N` makes N
// requests, 8 at a time, each on a new connection, and prints
// "N of N" when every answer was right.
const cluster = require('cluster');
const http = require('http');
const [mode, portArg, countArg] = process.argv.slice(2);
const port = Number(portArg);

if (mode === 'cluster' && cluster.isPrimary) {
  cluster.schedulingPolicy = cluster.SCHED_RR;
  for (let i = 0; i < 2; i += 1) cluster.fork();
  process.on('SIGTERM', () => {
    for (const id in cluster.workers) cluster.workers[id].kill();
    process.exit(0);
  });
} else if (mode === 'serve' || mode === 'cluster') {
  http.createServer((req, res) => {
    let len = 0;
    req.on('data', (d) => { len += d.length; });
    req.on('end', () => res.end(`echo:${len}`));
  }).listen(port, '127.0.0.1');
} else {
  const n = Number(countArg);
  const agent = new http.Agent({ keepAlive: false });
  let started = 0;
  let right = 0;
  let finished = 0;
  const one = () => {
    if (started >= n) return;
    const size = (started * 7919) % 70000;
    started += 1;
    const req = http.request({ host: '127.0.0.1', port, method: 'POST', agent }, (res) => {
      let body = '';
      res.on('data', (d) => { body += d; });
      res.on('end', () => {
        if (body === `echo:${size}`) right += 1;
        finished += 1;
        if (finished === n) console.log(`${right} of ${n}`);
        else one();
      });
    });
    req.on('error', (e) => { console.log(`request failed: ${e.message}`); process.exit(1); });
    req.end('x'.repeat(size));
  };
  for (let i = 0; i < 8; i += 1) one();
}
