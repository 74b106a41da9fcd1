// k6 load test for the surgeserve predictor, mirroring `python -m loadtest run`: the same
// stage shapes (loadtest/traffic.py preset), closed loop (virtual users) or open loop (arrival
// rate), a cache-hit-rate knob and a predict / bulk mix. Run in the cluster with job.yaml, or:
//   k6 run -e BASE_URL=http://localhost:8080 -e SHAPE=spike -e PEAK=32 loadtest/k6/script.js
import http from 'k6/http';
import { check } from 'k6';
import { Rate } from 'k6/metrics';

const BASE_URL = __ENV.BASE_URL || 'http://predictor.surgeserve.svc.cluster.local';
const SHAPE = __ENV.SHAPE || 'ramp';
const PEAK = parseFloat(__ENV.PEAK || '16');
const DURATION_S = parseFloat(__ENV.DURATION_S || '300');
// closed: PEAK virtual users; open: PEAK requests/s; sweep: a capacity curve, LEVELS virtual
// users one level after another, LEVEL_S seconds each (`python -m loadtest tune --curve` reads
// the --summary-export JSON of such a run as a measured curve).
const MODE = __ENV.MODE || 'closed';
const LEVELS = (__ENV.LEVELS || '1,2,4,8,16,32,64').split(',').map((x) => parseInt(x, 10));
const LEVEL_S = parseFloat(__ENV.LEVEL_S || '30');
const HIT_RATE = parseFloat(__ENV.HIT_RATE || '0.8'); // share of requests for a hot text
const HOT_TEXTS = parseInt(__ENV.HOT_TEXTS || '500', 10);
const BULK_FRACTION = parseFloat(__ENV.BULK_FRACTION || '0');
const BULK_SIZE = parseInt(__ENV.BULK_SIZE || '16', 10);
const SLO_P99_MS = parseFloat(__ENV.SLO_P99_MS || '250');

// [seconds, target] as fractions of DURATION_S and PEAK; the same table as
// loadtest/traffic.py preset() (a test compares them).
// SHAPES-BEGIN
const SHAPES = {
  "ramp": [[0.4, 1], [0.6, 1]],
  "steady": [[0, 1], [1, 1]],
  "spike": [[0, 0.25], [0.4, 0.25], [0.02, 1], [0.18, 1], [0.02, 0.25], [0.38, 0.25]],
  "ramp-down": [[0, 1], [0.6, 1], [0.4, 0]]
};
// SHAPES-END

const stages = SHAPES[SHAPE].map(([s, t]) => ({
  duration: `${Math.max(1, Math.round(s * DURATION_S))}s`,
  target: Math.round(t * PEAK),
}));

const scenario = MODE === 'open'
  ? { executor: 'ramping-arrival-rate', startRate: 0, timeUnit: '1s', stages,
      preAllocatedVUs: Math.ceil(PEAK), maxVUs: Math.ceil(PEAK * 8) }
  : { executor: 'ramping-vus', startVUs: 0, stages };

// Sweep: one constant-vus scenario per level, back to back, each tagged with its level; a
// threshold per level (always true) puts that level's figures in the summary.
const sweep = {};
const perLevel = {};
LEVELS.forEach((vus, i) => {
  sweep[`level_${vus}`] = { executor: 'constant-vus', vus, duration: `${LEVEL_S}s`,
    startTime: `${i * LEVEL_S}s`, gracefulStop: '0s', tags: { level: String(vus) } };
  for (const metric of ['http_req_duration', 'iteration_duration']) {
    perLevel[`${metric}{level:${vus}}`] = ['max>=0'];
  }
  perLevel[`http_reqs{level:${vus}}`] = ['count>=0'];
  perLevel[`http_req_failed{level:${vus}}`] = ['rate>=0'];
});

export const options = {
  scenarios: MODE === 'sweep' ? sweep : { predictor: scenario },
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)'],
  thresholds: Object.assign({
    http_req_failed: ['rate<0.01'],
    'http_req_duration{endpoint:predict}': [`p(99)<${SLO_P99_MS}`],
  }, MODE === 'sweep' ? perLevel : {}),
};

export const cacheHits = new Rate('surge_cache_hits');

const WORDS = ['a', 'warm', 'funny', 'dull', 'moving', 'film', 'plot', 'cast', 'script',
  'bold', 'tired', 'clever', 'story', 'ending', 'score', 'brilliant', 'messy', 'quiet'];

function sentence(seed) {
  // a deterministic review-like text per seed: the same seed is the same cache key
  let x = seed * 2654435761 % 4294967296;
  const words = [];
  for (let i = 0; i < 8; i++) {
    x = (x * 1103515245 + 12345) % 2147483648;
    words.push(WORDS[x % WORDS.length]);
  }
  return `${words.join(' ')} #${seed}`;
}

function text() {
  if (Math.random() < HIT_RATE) {
    return sentence(Math.floor(Math.random() * HOT_TEXTS)); // hot: cached after first use
  }
  return sentence(HOT_TEXTS + Math.floor(Math.random() * 1e12)); // fresh: a miss
}

const JSON_HEADERS = { headers: { 'Content-Type': 'application/json' } };

export default function () {
  if (Math.random() < BULK_FRACTION) {
    const texts = Array.from({ length: BULK_SIZE }, text);
    const res = http.post(`${BASE_URL}/v1/bulk-predict`, JSON.stringify({ texts }),
      Object.assign({ tags: { endpoint: 'bulk' } }, JSON_HEADERS));
    check(res, { 'bulk 200': (r) => r.status === 200 });
    if (res.status === 200) {
      for (const item of res.json('results')) cacheHits.add(item.cached);
    }
    return;
  }
  const res = http.post(`${BASE_URL}/v1/predict`, JSON.stringify({ text: text() }),
    Object.assign({ tags: { endpoint: 'predict' } }, JSON_HEADERS));
  check(res, { 'predict 200': (r) => r.status === 200 });
  if (res.status === 200) cacheHits.add(res.json('cached'));
}
