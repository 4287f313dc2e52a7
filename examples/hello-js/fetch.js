// The same app written for the platform instead of for Node: StarlingMonkey's fetch event.
// Build it with `npm run build:fetch`. Such a component cannot serve two requests in one
// instance, so wk gives it a fresh instance per request (and refuses wk.dev/instance-reuse).
addEventListener('fetch', (event) =>
  event.respondWith(new Response('Hello Kubernetes!', { headers: { 'content-type': 'text/plain' } })),
);
