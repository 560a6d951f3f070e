/*
 * pool.c -- a small worker-thread pool for blocking work (file reads now;
 * SQLite and BLAS later).
 *
 * Jobs run work(arg) on a worker thread; their done(arg) runs on the loop
 * thread, woken through a pipe registered with the runtime's event_base.
 * Workers never touch Lua. The pool starts on the first submit (start-up
 * stays cheap) with SIBYL_WORKERS threads (default 4).
 *
 * Caveats: a job cannot be interrupted once it runs. An op cancelled while
 * its job runs must mark the job abandoned; the job's done() then frees it.
 * At close, workers finish the queued jobs, then every done() runs.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "sb.h"

#define SB_POOL_DEFAULT_THREADS 4
#define SB_POOL_MAX_THREADS 64

typedef struct sb_job {
    void (*work)(void *arg);
    void (*done)(void *arg);
    void *arg;
    struct sb_job *next;
} sb_job;

struct sb_pool {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    sb_job *todo, *todo_tail;
    sb_job *finished;           /* LIFO; reversed when drained */
    int stop;
    int nthreads;
    pthread_t threads[SB_POOL_MAX_THREADS];
    int wake[2];                /* pipe: workers -> loop */
    struct event *ev;
};

static void *worker_main(void *arg)
{
    sb_pool *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (p->todo == NULL && !p->stop)
            pthread_cond_wait(&p->cv, &p->mu);
        sb_job *j = p->todo;
        if (j == NULL)
            break;                      /* stopping and nothing left */
        p->todo = j->next;
        if (p->todo == NULL)
            p->todo_tail = NULL;
        pthread_mutex_unlock(&p->mu);

        j->work(j->arg);

        pthread_mutex_lock(&p->mu);
        int was_empty = p->finished == NULL;
        j->next = p->finished;
        p->finished = j;
        if (was_empty) {
            ssize_t r;
            do
                r = write(p->wake[1], "", 1);
            while (r < 0 && errno == EINTR);
        }
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* Run done() for every finished job, in completion order. Loop thread. */
static void drain_finished(sb_pool *p)
{
    pthread_mutex_lock(&p->mu);
    sb_job *j = p->finished, *rev = NULL;
    p->finished = NULL;
    pthread_mutex_unlock(&p->mu);
    while (j) {
        sb_job *next = j->next;
        j->next = rev;
        rev = j;
        j = next;
    }
    while (rev) {
        sb_job *next = rev->next;
        rev->done(rev->arg);
        free(rev);
        rev = next;
    }
}

static void wake_cb(evutil_socket_t fd, short what, void *arg)
{
    char buf[256];
    SB_UNUSED(what);
    while (read(fd, buf, sizeof buf) > 0)
        ;
    drain_finished(arg);
}

static sb_pool *pool_start(sibyl_rt *rt)
{
    sb_pool *p = calloc(1, sizeof *p);
    if (p == NULL)
        return NULL;
    if (pipe(p->wake) != 0)
        goto err_free;
    for (int i = 0; i < 2; i++) {
        fcntl(p->wake[i], F_SETFL, O_NONBLOCK);
        fcntl(p->wake[i], F_SETFD, FD_CLOEXEC);
    }
    p->ev = event_new(rt->base, p->wake[0], EV_READ | EV_PERSIST, wake_cb, p);
    if (p->ev == NULL || event_add(p->ev, NULL) != 0)
        goto err_pipe;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    int n = rt->nworkers > 0 ? rt->nworkers : SB_POOL_DEFAULT_THREADS;
    if (n > SB_POOL_MAX_THREADS)
        n = SB_POOL_MAX_THREADS;
    for (int i = 0; i < n; i++) {
        if (pthread_create(&p->threads[i], NULL, worker_main, p) != 0)
            break;
        p->nthreads++;
    }
    if (p->nthreads == 0) {
        pthread_mutex_destroy(&p->mu);
        pthread_cond_destroy(&p->cv);
        goto err_pipe;
    }
    return p;

err_pipe:
    if (p->ev)
        event_free(p->ev);
    close(p->wake[0]);
    close(p->wake[1]);
err_free:
    free(p);
    return NULL;
}

int sb_pool_submit(sibyl_rt *rt, void (*work)(void *), void (*done)(void *), void *arg)
{
    if (rt->pool == NULL && (rt->pool = pool_start(rt)) == NULL)
        return -1;
    sb_job *j = malloc(sizeof *j);
    if (j == NULL)
        return -1;
    j->work = work;
    j->done = done;
    j->arg = arg;
    j->next = NULL;
    sb_pool *p = rt->pool;
    pthread_mutex_lock(&p->mu);
    if (p->todo_tail)
        p->todo_tail->next = j;
    else
        p->todo = j;
    p->todo_tail = j;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
    return 0;
}

void sb_pool_free(sibyl_rt *rt)
{
    sb_pool *p = rt->pool;
    if (p == NULL)
        return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->nthreads; i++)
        pthread_join(p->threads[i], NULL);
    drain_finished(p);
    event_free(p->ev);
    close(p->wake[0]);
    close(p->wake[1]);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p);
    rt->pool = NULL;
}
