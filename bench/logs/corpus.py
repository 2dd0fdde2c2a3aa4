# bench/logs/corpus.py: the messages bench/logs.sh sends, written to stdout.
#
#   python3 bench/logs/corpus.py LINES END_EPOCH SEED >corpus.txt
#
# LINES distinct RFC 3164 syslog lines (PRI, timestamp, hostname, tag), each an
# nginx access-log line of a web farm: client address, method, path, status,
# size, user agent, response time. About 220 bytes a line (130-290), about 7:1
# with zstd's default level, like real access logs (not loggen's own padding,
# which compresses 50:1 and would flatter any compressed store). The timestamps
# rise evenly over the hour before END_EPOCH. The same arguments give the same
# file; bench/logs.sh writes one file per connection, each with its own SEED
# (loggen reads its file from the start on every connection: with one file, the
# same line would arrive CONNECTIONS times at once, and compress away).
import random
import sys
import time

lines, end, seed = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(seed)
PATHS = ["/", "/index.html", "/api/v1/orders", "/api/v1/users/{}", "/static/js/app.{}.js",
         "/static/css/site.css", "/images/products/{}.jpg", "/search?q={}", "/cart/add?item={}&qty={}",
         "/login", "/logout", "/healthz", "/blog/2026/11/{}-post", "/wp-login.php", "/favicon.ico",
         "/robots.txt", "/api/v2/inventory/{}/stock"]
WORDS = ["shoes", "red", "laptop", "garden", "chair", "coffee", "bike", "lamp", "phone", "desk", "book", "tent"]
AGENTS = ["Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{}.0.0.0 Safari/537.36",
          "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.{} Safari/605.1.15",
          "Mozilla/5.0 (X11; Linux x86_64; rv:{}.0) Gecko/20100101 Firefox/{}.0",
          "Mozilla/5.0 (iPhone; CPU iPhone OS 17_{} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
          "curl/7.{}.0", "Googlebot/2.1 (+http://www.google.com/bot.html) v{}"]
STATUS = [200] * 30 + [304] * 4 + [301, 302, 404, 404, 500, 502, 403]
METHODS = ["GET"] * 8 + ["POST", "HEAD"]

out = sys.stdout
start = end - 3600
for i in range(lines):
    t = time.gmtime(start + i * 3600 // lines)
    syslog_ts = time.strftime("%b %e %H:%M:%S", t)
    nginx_ts = time.strftime("%d/%b/%Y:%H:%M:%S +0000", t)
    ip = "%d.%d.%d.%d" % (rnd.choice([198, 203, 192, 10, 172, 85, 91]), rnd.randrange(256), rnd.randrange(256),
                          rnd.randrange(1, 255))
    path = rnd.choice(PATHS)
    path = path.format(*[rnd.choice(WORDS) + str(rnd.randrange(10000)) for _ in range(path.count("{}"))])
    agent = rnd.choice(AGENTS)
    agent = agent.format(*[rnd.randrange(60, 130) for _ in range(agent.count("{}"))])
    status = rnd.choice(STATUS)
    size = rnd.randrange(200, 90000) if status == 200 else rnd.randrange(0, 600)
    rt = rnd.random() * (2.5 if status >= 500 else 0.3)
    out.write('<190>%s web%02d nginx: %s - - [%s] "%s %s HTTP/1.1" %d %d "-" "%s" rt=%.3f\n'
              % (syslog_ts, rnd.randrange(1, 9), ip, nginx_ts, rnd.choice(METHODS), path, status, size, agent, rt))
