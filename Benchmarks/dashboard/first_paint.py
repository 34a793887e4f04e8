"""The dashboard's job list, first paint, in a real headless Chromium: `first_paint.py URL RUNS`,
the token in $CAPSTAN_DASHBOARD_TOKEN. Loads `/` RUNS times (after one warm-up load) with the token
already in sessionStorage and prints one JSON object of per-run figures (ms from navigation
start): first contentful paint, the job table rendered and painted (app.js marks it after the next
frame), the /v1/overview fetch as the page saw it, and the rows shown."""
import json
import os
import sys

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

url, runs = sys.argv[1], int(sys.argv[2])
opts = webdriver.ChromeOptions()
opts.binary_location = "/usr/bin/chromium"
for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"]:
    opts.add_argument(a)
d = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=opts)
out = {"fcp": [], "jobsRendered": [], "overviewFetch": [], "domContentLoaded": [], "render": [], "jobsAllRendered": [], "rows": []}
try:
    d.get(url + "/")
    d.execute_script("sessionStorage.setItem('capstan.token', arguments[0])", os.environ["CAPSTAN_DASHBOARD_TOKEN"])
    for i in range(runs + 1):
        d.get(url + "/")
        WebDriverWait(d, 120, poll_frequency=0.05).until(lambda d: d.execute_script("return window.capstanDashboard && window.capstanDashboard.jobsAllRendered"))
        f = d.execute_script("""
            const p = performance.getEntriesByName('first-contentful-paint')[0];
            const n = performance.getEntriesByType('navigation')[0];
            return {fcp: p ? p.startTime : null, jobsRendered: window.capstanDashboard.jobsRendered,
                    overviewFetch: window.capstanDashboard.overviewFetchMs, render: window.capstanDashboard.renderMs, jobsAllRendered: window.capstanDashboard.jobsAllRendered, domContentLoaded: n.domContentLoadedEventEnd,
                    rows: document.querySelectorAll('#jobs tbody tr').length};""")
        if i == 0:
            continue  # warm-up: the browser's first start
        for k in out:
            out[k].append(f[k])
finally:
    d.quit()
print(json.dumps(out))
