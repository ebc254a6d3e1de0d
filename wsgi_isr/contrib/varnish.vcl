#
# Varnish in front of a wsgi_isr application (Varnish 6/7, vmod xkey from Debian's
# varnish-modules). The application runs with
#
#     ISRMiddleware(app, ..., purge=["varnish://127.0.0.1:6081"])
#
# so every cached answer carries its tags as "xkey: k1 k2 ..." and every invalidation
# arrives here as "PURGE /" with "xkey-softpurge: ..." (soft) or "xkey-purge: ..." (hard).
#
#   varnishd -a :6081 -f /path/to/varnish.vcl -s malloc,256m
#
# Edit the backend and the purgers ACL (the addresses of the application servers).
#
vcl 4.1;

import std;
import xkey;

backend default {
    .host = "127.0.0.1";
    .port = "8000";
}

# Who may purge: the application servers, never the Internet.
acl purgers {
    "127.0.0.1";
    "::1";
}

sub vcl_recv {
    if (req.method == "PURGE") {
        if (client.ip !~ purgers) {
            return (synth(403, "Forbidden"));
        }
        if (req.http.xkey-purge) {
            set req.http.n-gone = xkey.purge(req.http.xkey-purge);
            return (synth(200, "Purged " + req.http.n-gone + " objects"));
        }
        if (req.http.xkey-softpurge) {
            # soft: the objects stay servable in grace while Varnish fetches them again
            set req.http.n-gone = xkey.softpurge(req.http.xkey-softpurge);
            return (synth(200, "Soft-purged " + req.http.n-gone + " objects"));
        }
        return (synth(400, "PURGE needs an xkey-purge or xkey-softpurge header"));
    }
    if (req.method != "GET" && req.method != "HEAD") {
        return (pass);
    }
    # Personal and preview requests go to the application and are never stored here:
    # cookies (sessions, the __isr_bypass cookie), credentials, the preview header.
    if (req.http.Cookie || req.http.Authorization || req.http.X-ISR-Bypass) {
        return (pass);
    }
    return (hash);
}

sub vcl_backend_response {
    if (bereq.uncacheable) {
        return (deliver);
    }
    # Store only what the origin marks shared-cacheable: an explicit s-maxage, nothing
    # private, no cookie set. Everything else is a hit-for-miss for a short while.
    if (beresp.http.Set-Cookie
        || beresp.http.Cache-Control ~ "(?i)(private|no-store|no-cache)"
        || beresp.http.Cache-Control !~ "(?i)s-maxage=[0-9]+"
        || beresp.http.Vary == "*") {
        set beresp.uncacheable = true;
        set beresp.ttl = 10s;
        return (deliver);
    }
    # wsgi_isr's s-maxage is the freshness that REMAINS (it already counts the Age it
    # sends): set the TTL from now, so that Varnish does not subtract Age a second time.
    set beresp.ttl = std.duration(
        regsub(beresp.http.Cache-Control, "(?i)^.*s-maxage=([0-9]+).*$", "\1") + "s", 0s);
    # stale-while-revalidate becomes grace: a stale or soft-purged object is served at
    # once while one background fetch brings the new one.
    if (beresp.http.Cache-Control ~ "(?i)stale-while-revalidate=[0-9]+") {
        set beresp.grace = std.duration(regsub(beresp.http.Cache-Control,
            "(?i)^.*stale-while-revalidate=([0-9]+).*$", "\1") + "s", 0s);
    } else {
        set beresp.grace = 0s;
    }
    if (beresp.ttl <= 0s && beresp.grace <= 0s) {
        # nothing to keep (s-maxage=0 without a stale window): a short hit-for-miss, so
        # concurrent requests go to the origin instead of queueing behind each other
        set beresp.uncacheable = true;
        set beresp.ttl = 1s;
    }
    return (deliver);
}

sub vcl_deliver {
    # the keys are for this cache only
    unset resp.http.xkey;
    if (obj.hits > 0) {
        set resp.http.X-Cache = "HIT";
    } else {
        set resp.http.X-Cache = "MISS";
    }
}
