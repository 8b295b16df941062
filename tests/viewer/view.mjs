// Opens studies in the OHIF viewer with the system chromium (playwright-core, headless) and reports
// what is on the screen: tests/test_viewer.py runs it as `node view.mjs PLAN.json` and reads one
// JSON document from stdout; progress goes to stderr.
//
// PLAN.json:
//   { "baseUrl": "http://127.0.0.1:PORT", "chromium": "/usr/bin/chromium", "artefacts": "/dir",
//     "steps": [ { "name": "seg-binary", "route": "/viewer", "study": "1.2...",
//                  "series": "1.2... (SeriesInstanceUID to double-click in the study browser)",
//                  "click": ["Yes"],           // buttons to press when they show (prompts)
//                  "expect": ["Right lung"],   // wait (up to expectWithinMs) until the page shows all
//                  "clickTexts": ["Right lung"],  // texts to click once shown (a segment: jump to it)
//                  "arrowSteps": 3,  // press the viewport's next-measurement arrow, reading the image
//                  "openPanels": ["trackedMeasurements-btn"],  // data-cy of side panel tabs to open
//                  "colors": [[128, 174, 128]], "tolerance": 24,  // pixels of each colour in the viewport
//                  "timeoutMs": 60000, "expectWithinMs": 20000, "settleMs": 1500,
//                  "clickTimeoutMs": 20000 } ] }
//
// Answer: { "steps": [ { name, url, screenshot, stepScreenshots, viewportScreenshot, viewport, colorCounts,
//                        innerText, svgText, svgTextBoxes, toasts, pageErrors, caughtErrors, console,
//                        failedRequests, displaySets,
//                        measurements, segmentations, annotations, waitedFor, timedOut, unclicked,
//                        seconds } ] }
// Each step gets a fresh page in one browser context (the bundles stay in its cache).
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const plan = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const log = (...args) => console.error('[view]', ...args);
const clip = (text, n = 600) => (text.length > n ? `${text.slice(0, n)}…` : text);

// What OHIF holds, read through the services OHIF's cornerstone extension puts on window: which
// display sets exist (and whether an SR is rehydratable), which measurements and segments were made.
function ohifState() {
  const services = window.services;
  if (!services) return null;
  const displaySets = (services.displaySetService?.getActiveDisplaySets() ?? []).map(ds => ({
    displaySetInstanceUID: ds.displaySetInstanceUID,
    SeriesInstanceUID: ds.SeriesInstanceUID,
    SeriesDescription: ds.SeriesDescription ?? null,
    Modality: ds.Modality ?? null,
    numImages: ds.numImageFrames ?? ds.instances?.length ?? null,
    isLoaded: ds.isLoaded ?? null,
    isHydrated: ds.isHydrated ?? null,
    isRehydratable: ds.isRehydratable ?? null,
    unsupported: ds.unsupported ?? null,
    measurements: Array.isArray(ds.measurements)
      ? ds.measurements.map(m => ({ TrackingIdentifier: m.TrackingIdentifier ?? null, loaded: m.loaded ?? null,
          graphicType: m.graphicType ?? m.coords?.[0]?.GraphicType ?? null, labels: m.labels ?? [] }))
      : null,
  }));
  const measurements = (services.measurementService?.getMeasurements() ?? []).map(m => ({
    label: m.label ?? null, toolName: m.toolName ?? null, displayText: m.displayText ?? null,
    referenceSeriesUID: m.referenceSeriesUID ?? null,
  }));
  const segmentations = (services.segmentationService?.getSegmentations() ?? []).map(s => ({
    segmentationId: s.segmentationId ?? s.id ?? null, label: s.label ?? null,
    segments: Object.values(s.segments ?? {}).filter(Boolean).map(g => ({
      segmentIndex: g.segmentIndex ?? null, label: g.label ?? null })),
  }));
  // what cornerstone draws: each annotation's tool, image and points (patient mm), e.g. an SR's regions
  const annotations = (window.cornerstoneTools?.annotation?.state?.getAllAnnotations?.() ?? []).map(a => ({
    toolName: a.metadata?.toolName ?? null, referencedImageId: a.metadata?.referencedImageId ?? null,
    trackingUID: a.data?.TrackingUniqueIdentifier ?? null,
    points: (a.data?.handles?.points ?? []).map(p => Array.from(p)),
    polylines: Object.values(a.data?.renderableData ?? {}).flat().map(line => Array.from(line, p => Array.from(p))),
  }));
  return { displaySets, measurements, segmentations, annotations };
}

// Each annotation text box and how much of it lies on its viewport (1: all of it, 0: off screen):
// cornerstone places a box beside its graphic, which can put it outside the canvas.
function svgTextBoxes() {
  return Array.from(document.querySelectorAll('svg text')).map(t => {
    const lines = Array.from(t.querySelectorAll('tspan')).map(s => s.textContent);
    const text = lines.length ? lines.join('\n') : t.textContent;
    const box = t.getBoundingClientRect();
    const pane = (t.closest('[data-viewport-uid]') ?? t.ownerSVGElement?.parentElement)?.getBoundingClientRect();
    let onScreen = null;
    if (pane && box.width > 0 && box.height > 0) {
      const w = Math.max(0, Math.min(box.right, pane.right) - Math.max(box.left, pane.left));
      const h = Math.max(0, Math.min(box.bottom, pane.bottom) - Math.max(box.top, pane.top));
      onScreen = Math.round((w * h) / (box.width * box.height) * 100) / 100;
    }
    return { text, onScreen };
  }).filter(b => b.text && b.text.trim());
}

function visibleSvgText() {
  // cornerstone draws annotation text boxes as <text><tspan>line</tspan>...</text> in an svg layer
  return Array.from(document.querySelectorAll('svg text')).map(t => {
    const lines = Array.from(t.querySelectorAll('tspan')).map(s => s.textContent);
    return lines.length ? lines.join('\n') : t.textContent;
  }).filter(text => text && text.trim());
}

// True once cornerstone has viewports and each shows an image (the study's first view is done).
function imagesShown() {
  const engines = window.cornerstone?.getRenderingEngines?.() ?? [];
  const viewports = engines.flatMap(engine => engine.getViewports());
  return viewports.length > 0 && viewports.every(vp => {
    try {
      return Boolean(vp.getCurrentImageId?.()) && vp.getImageData?.() != null;
    } catch {
      return false;
    }
  });
}

// The viewport that shows the display set (or, once a SEG is loaded onto its image, the active
// one): its id, what it shows, and its rectangle on the page.
async function viewportOf(page, displaySetUid) {
  return page.evaluate(uid => {
    const grid = window.services?.viewportGridService?.getState();
    if (!grid) return null;
    const viewports = [...grid.viewports.values()];
    const chosen = viewports.find(v => (v.displaySetInstanceUIDs ?? []).includes(uid))
      ?? grid.viewports.get(grid.activeViewportId);
    const element = chosen && document.querySelector(`[data-viewport-uid="${chosen.viewportId}"]`);
    if (!element) return null;
    const r = element.getBoundingClientRect();
    return { viewportId: chosen.viewportId, displaySetInstanceUIDs: chosen.displaySetInstanceUIDs ?? [],
             count: viewports.length, rect: { x: r.x, y: r.y, width: r.width, height: r.height } };
  }, displaySetUid ?? null).catch(() => null);
}

// How many pixels of a PNG are within `tolerance` (each of R, G, B) of each colour.
async function countColors({ png, colors, tolerance }) {
  const bytes = Uint8Array.from(atob(png), c => c.charCodeAt(0));
  const bitmap = await createImageBitmap(new Blob([bytes], { type: 'image/png' }));
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const context = canvas.getContext('2d');
  context.drawImage(bitmap, 0, 0);
  const { data } = context.getImageData(0, 0, bitmap.width, bitmap.height);
  const counts = colors.map(() => 0);
  for (let i = 0; i < data.length; i += 4) {
    colors.forEach(([r, g, b], k) => {
      if (Math.abs(data[i] - r) <= tolerance && Math.abs(data[i + 1] - g) <= tolerance
          && Math.abs(data[i + 2] - b) <= tolerance) counts[k] += 1;
    });
  }
  return { pixels: data.length / 4, counts };
}

function keepBox(seen, box) {  // the best sighting: a box the viewer did show, somewhere
  const before = seen.get(box.text);
  if (!before || (box.onScreen ?? -1) > (before.onScreen ?? -1)) seen.set(box.text, box);
}

async function screenshot(page, name) {
  const file = path.join(plan.artefacts, name);
  await page.screenshot({ path: file }).catch(e => log(`screenshot ${name} failed: ${e.message}`));
  return file;
}

async function clickWhenShown(page, labels, deadline) {
  // Prompts (e.g. "track these measurements?") appear some time after the series is shown.
  const pending = new Set(labels);
  while (pending.size && Date.now() < deadline) {
    for (const label of [...pending]) {
      const button = page.getByRole('button', { name: label, exact: true }).first();
      if (await button.isVisible().catch(() => false)) {
        log(`click "${label}"`);
        await button.click().catch(e => log(`click "${label}" failed: ${e.message}`));
        pending.delete(label);
      }
    }
    if (pending.size) await page.waitForTimeout(250);
  }
  return [...pending];
}

async function runStep(context, step) {
  const started = Date.now();
  const timeoutMs = step.timeoutMs ?? 60000;
  const page = await context.newPage();
  const pageErrors = [];
  const consoleMessages = [];
  const failedRequests = [];
  page.on('pageerror', error => pageErrors.push(clip(String(error.stack || error), 2000)));
  const caughtErrors = [];
  page.on('console', message => {
    const text = message.text();
    // OHIF catches what a viewport throws in a React error boundary: no pageerror, only a debug
    // line and a "Something went wrong" toast that fades after a few seconds.
    if (/Error Boundary|Something went wrong/.test(text)) caughtErrors.push(clip(text, 2000));
    if (consoleMessages.length < 400) {
      consoleMessages.push({ type: message.type(), text: clip(text) });
    }
  });
  page.on('requestfailed', request => failedRequests.push(
    `${request.method()} ${request.url()}: ${request.failure()?.errorText}`));
  page.on('response', response => {
    if (response.status() >= 400) failedRequests.push(`${response.request().method()} ${response.url()}: ${response.status()}`);
  });

  const query = new URLSearchParams({ StudyInstanceUIDs: step.study, ...(step.query ?? {}) });
  const url = `${plan.baseUrl}${step.route ?? '/viewer'}?${query}`;
  const result = { name: step.name, url, waitedFor: [], timedOut: false, unclicked: [] };
  const svgSeen = new Set();  // text drawn on the image at any of the positions visited
  const boxesSeen = new Map();  // text -> { text, onScreen } at its best sighting
  result.timeline = [];
  const mark = what => result.timeline.push([what, (Date.now() - started) / 1000]);
  try {
    await page.goto(url, { waitUntil: 'domcontentloaded', timeout: timeoutMs });
    await page.waitForSelector('[data-cy="study-browser-thumbnail"], [data-cy="study-browser-thumbnail-no-image"]',
                               { timeout: timeoutMs });
    result.waitedFor.push('thumbnails');
    mark('thumbnails');
    // Let the hanging protocol finish showing its first images: a double-click while the first
    // stack is still loading makes OHIF 3.13.2 throw "The stack viewport has been destroyed".
    await page.waitForFunction(imagesShown, null, { timeout: timeoutMs, polling: 250 })
      .then(() => page.waitForTimeout(1000))
      .then(() => mark('first images'))
      .catch(() => log(`${step.name}: the first images did not all show`));
    if (step.series) {
      const handle = await page.waitForFunction(seriesUid => {
        const found = window.services?.displaySetService?.getActiveDisplaySets()
          .find(ds => ds.SeriesInstanceUID === seriesUid);
        return found && document.getElementById(`thumbnail-${found.displaySetInstanceUID}`)
          ? found.displaySetInstanceUID : null;
      }, step.series, { timeout: timeoutMs });
      const displaySetUid = await handle.jsonValue();
      result.displaySetInstanceUID = displaySetUid;
      result.waitedFor.push(`thumbnail of ${step.series}`);
      await page.locator(`[id="thumbnail-${displaySetUid}"]`).dblclick({ timeout: timeoutMs });
      log(`${step.name}: double-clicked ${displaySetUid}`);
      mark('double-clicked');
    }
    const deadline = Date.now() + (step.expectWithinMs ?? timeoutMs);
    if (step.click?.length) {
      result.unclicked = await clickWhenShown(page, step.click, Math.min(deadline, Date.now() + (step.clickWithinMs ?? timeoutMs)));
      mark('prompts');
    }
    if (step.expect?.length) {
      try {
        await page.waitForFunction(texts => {
          const shown = document.body.innerText + '\n' + Array.from(document.querySelectorAll('svg text'))
            .map(t => t.textContent).join('\n');
          return texts.every(text => shown.includes(text));
        }, step.expect, { timeout: Math.max(1000, deadline - Date.now()), polling: 250 });
        result.waitedFor.push(`texts ${JSON.stringify(step.expect)}`);
        mark('texts shown');
      } catch (error) {
        result.timedOut = true;
        log(`${step.name}: not all of ${JSON.stringify(step.expect)} shown: ${error.message.split('\n')[0]}`);
      }
    }
    // a click waits for its target as long as a radiologist would on a busy workstation: the test
    // runs beside other tests (scripts/test.sh), and a segment's row can take seconds to become clickable
    const clickTimeoutMs = step.clickTimeoutMs ?? 20000;
    for (const text of step.clickTexts ?? []) {  // e.g. a segment in the panel: jumps to its centre
      await page.getByText(text, { exact: true }).last().click({ timeout: clickTimeoutMs })
        .then(() => log(`${step.name}: clicked text "${text}"`))
        .catch(e => pageErrors.push(`[harness] click text ${text}: ${e.message.split('\n')[0]}`));
    }
    await page.waitForTimeout(step.settleMs ?? 1500);  // rendering after the last text appeared
    mark('settled');
    for (const cy of step.openPanels ?? []) {  // e.g. the measurements panel, closed in /viewer
      await page.locator(`[data-cy="${cy}"]`).first().click({ timeout: clickTimeoutMs })
        .then(() => page.waitForTimeout(1000))
        .catch(e => pageErrors.push(`[harness] open panel ${cy}: ${e.message.split('\n')[0]}`));
    }
    result.screenshot = await screenshot(page, `${step.name}.png`);  // what the user sees first
    result.stepScreenshots = [];
    for (let i = 1; i <= (step.arrowSteps ?? 0); i++) {  // the viewport's "next measurement" arrow
      for (const text of await page.evaluate(visibleSvgText)) svgSeen.add(text);
      for (const box of await page.evaluate(svgTextBoxes)) keepBox(boxesSeen, box);
      const next = page.locator('[data-cy="viewport-action-arrows-right"]').first();
      if (!(await next.isVisible().catch(() => false))) break;
      await next.click().catch(() => {});
      await page.waitForTimeout(800);
      result.stepScreenshots.push(await screenshot(page, `${step.name}-next-${i}.png`));
    }
  } catch (error) {
    result.timedOut = true;
    pageErrors.push(`[harness] ${clip(String(error.message || error), 2000)}`);
  }
  result.screenshot ??= await screenshot(page, `${step.name}.png`);  // the state an error left
  const viewport = await viewportOf(page, result.displaySetInstanceUID);
  if (viewport) {
    result.viewport = viewport;
    const shot = await page.screenshot({ clip: viewport.rect }).catch(() => null);
    if (shot) {
      result.viewportScreenshot = path.join(plan.artefacts, `${step.name}-viewport.png`);
      fs.writeFileSync(result.viewportScreenshot, shot);
      if (step.colors?.length) {
        result.colorCounts = await page.evaluate(countColors,
          { png: shot.toString('base64'), colors: step.colors, tolerance: step.tolerance ?? 24 });
      }
    }
  }
  result.innerText = await page.evaluate(() => document.body.innerText).catch(() => '');
  for (const text of await page.evaluate(visibleSvgText).catch(() => [])) svgSeen.add(text);
  result.svgText = [...svgSeen];
  for (const box of await page.evaluate(svgTextBoxes).catch(() => [])) keepBox(boxesSeen, box);
  result.svgTextBoxes = [...boxesSeen.values()];
  result.toasts = await page.evaluate(() => Array.from(document.querySelectorAll('[data-sonner-toast], [role="status"], [role="alert"]'))
    .map(e => e.innerText).filter(Boolean)).catch(() => []);
  const state = await page.evaluate(ohifState).catch(e => ({ error: String(e) }));
  Object.assign(result, state ?? {});
  result.pageErrors = pageErrors;
  result.caughtErrors = caughtErrors;
  result.console = consoleMessages;
  result.failedRequests = failedRequests;
  result.seconds = (Date.now() - started) / 1000;
  await page.close();
  log(`${step.name}: ${result.seconds.toFixed(1)} s, ${pageErrors.length} page error(s)`);
  return result;
}

const browser = await chromium.launch({
  executablePath: plan.chromium,
  headless: true,
  args: [
    '--no-sandbox',
    // cornerstone3D renders with WebGL: software GL, as there is no GPU here
    '--use-gl=angle', '--use-angle=swiftshader', '--enable-unsafe-swiftshader', '--ignore-gpu-blocklist',
    '--disable-dev-shm-usage',
  ],
});
try {
  const context = await browser.newContext({
    viewport: { width: 2400, height: 1000 },
    serviceWorkers: 'block',  // OHIF's sw.js would cache across steps and hide requests
  });
  // OHIF's onboarding tour (shepherd.js, "Scrolling Through Images 1/11") would cover the viewport
  // on the first visit of /viewer; it is skipped for tours listed in localStorage.shownTours.
  await context.addInitScript(() => {
    localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']));
  });
  fs.mkdirSync(plan.artefacts, { recursive: true });
  const steps = [];
  for (const step of plan.steps) {
    steps.push(await runStep(context, step));
  }
  process.stdout.write(JSON.stringify({ steps }));
} finally {
  await browser.close();
}
