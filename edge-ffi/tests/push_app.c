/* A C app that embeds the rtmpq edge (librtmpqedge, include/rtmpq_edge.h), as a phone or
 * device encoder would: it starts an edge from the TOML config in argv[1], prints the URL to
 * push to, answers "figures" on stdin with the edge's figures while something pushes through
 * it, answers "events" with the events not yet taken, and on "stop" stops the edge (with a
 * drain) and exits 0. The test
 * (tests/c_library.rs) builds it with AddressSanitizer: a leak at stop fails it. */
#include "rtmpq_edge.h"

#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: push_app CONFIG_TOML\n");
        return 2;
    }
    /* Misuse is answered, not crashed on. */
    char err[512] = {0};
    if (rtmpq_edge_start("gateway = 1", err, sizeof err) != NULL || err[0] == 0) {
        fprintf(stderr, "a bad config was not refused\n");
        return 1;
    }
    for (char *c = err; *c != 0; c++)
        if (*c == '\n')
            *c = ' ';
    printf("refused %s\n", err);
    RtmpqEdgeFigures none;
    if (rtmpq_edge_figures(NULL, &none) != -1 || rtmpq_edge_next_event(NULL, err, sizeof err) != 0) {
        fprintf(stderr, "a NULL edge was not refused\n");
        return 1;
    }
    rtmpq_edge_stop(NULL);

    RtmpqEdge *edge = rtmpq_edge_start(argv[1], err, sizeof err);
    if (edge == NULL) {
        fprintf(stderr, "start failed: %s\n", err);
        return 1;
    }
    char url[256];
    size_t n = rtmpq_edge_rtmp_url(edge, url, sizeof url);
    if (n == 0 || n >= sizeof url) {
        fprintf(stderr, "no url\n");
        return 1;
    }
    printf("url %s\n", url);
    fflush(stdout);

    char line[64];
    while (fgets(line, sizeof line, stdin) != NULL) {
        if (strncmp(line, "figures", 7) == 0) {
            RtmpqEdgeFigures f;
            if (rtmpq_edge_figures(edge, &f) != 0) {
                fprintf(stderr, "no figures\n");
                return 1;
            }
            printf("figures connected=%u sessions=%u rtt_ms=%.1f bitrate_bps=%.0f "
                   "path_bitrate_bps=%llu queue_age_ms=%.1f dropped_video=%llu\n",
                   f.connected, f.sessions, f.rtt_ms, f.bitrate_bps,
                   (unsigned long long)f.path_bitrate_bps, f.queue_age_ms,
                   (unsigned long long)f.dropped_video_frames);
            fflush(stdout);
        } else if (strncmp(line, "events", 6) == 0) {
            char event[2048];
            while ((n = rtmpq_edge_next_event(edge, event, sizeof event)) > 0 && n < sizeof event)
                printf("event %s\n", event);
            printf("end\n");
            fflush(stdout);
        } else if (strncmp(line, "stop", 4) == 0) {
            break;
        }
    }
    rtmpq_edge_stop(edge);
    printf("stopped\n");
    fflush(stdout);
    return 0;
}
