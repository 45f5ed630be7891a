/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>

#include "ctl-agent.h"
#include "ctl-common.h"

/* How long pkttyagent may take to connect to the bus and register with polkitd. */
#define AGENT_REGISTER_TIMEOUT_MSEC (10 * 1000)
/* How long it may take to go after SIGTERM before it gets SIGKILL. */
#define AGENT_STOP_TIMEOUT_MSEC (5 * 1000)

static bool agent_allowed;
static pid_t agent_pid; /* 0: none runs */

void ctl_agent_set_allowed(bool allowed) {
        agent_allowed = allowed;
}

/* Waits for pid with a bound; returns true when it was reaped. */
static bool reap_within(pid_t pid, int timeout_msec) {
        for (int waited = 0;; waited += 10) {
                pid_t p = waitpid(pid, NULL, WNOHANG);

                if (p == pid || (p < 0 && errno == ECHILD))
                        return true;
                if (p < 0 && errno != EINTR)
                        return false;
                if (waited >= timeout_msec)
                        return false;
                (void) nanosleep(&(struct timespec){.tv_nsec = 10 * 1000 * 1000}, NULL);
        }
}

void ctl_agent_close(void) {
        pid_t pid = agent_pid;

        if (pid <= 0)
                return;
        agent_pid = 0;

        /* pkttyagent restores the terminal on SIGTERM; SIGCONT in case it was stopped. */
        (void) kill(pid, SIGTERM);
        (void) kill(pid, SIGCONT);
        if (!reap_within(pid, AGENT_STOP_TIMEOUT_MSEC)) {
                (void) kill(pid, SIGKILL);
                (void) waitpid(pid, NULL, 0);
        }
}

/* The child: a clean signal state, the notify fd as the one fd it inherits beyond stdio,
 * and death with us, so that a killed loopmgrctl does not leave an agent on the terminal. */
_Noreturn static void agent_exec(const char *binary, int notify_fd, pid_t parent) {
        char fd_str[16], pid_str[16];
        sigset_t none;
        int fd;

        sigemptyset(&none);
        (void) sigprocmask(SIG_SETMASK, &none, NULL);
        (void) signal(SIGPIPE, SIG_DFL);

        if (prctl(PR_SET_PDEATHSIG, SIGTERM) < 0 || getppid() != parent)
                _exit(EXIT_FAILURE);

        /* The pipe was made O_CLOEXEC; a dup without the flag is what the agent keeps. */
        fd = fcntl(notify_fd, F_DUPFD, 3);
        if (fd < 0)
                _exit(EXIT_FAILURE);
        snprintf(fd_str, sizeof(fd_str), "%d", fd);
        snprintf(pid_str, sizeof(pid_str), "%d", (int) parent);

        /* --process with our pid: loopmgrd asks polkit about our bus connection (subject
         * system-bus-name). polkitd 122 registers agents only for processes and sessions
         * ("Only unix-process and unix-session subjects can be used for authentication
         * agents"), and maps the bus name to the process owning it to find one. Without
         * --process pkttyagent registers for the logind session of its process, which a login
         * over ssh, a container or a test harness may not have.
         *
         * No --fallback (systemctl passes it, registering for the session): polkitd uses a
         * fallback agent only after it has found a logind session for the subject
         * (get_authentication_agent_for_subject() in polkitbackendinteractiveauthority.c), so
         * without a session our agent would never be asked. An agent registered for our own
         * process replaces nobody's: the session's agent keeps serving everything else. */
        execl(binary, binary, "--notify-fd", fd_str, "--process", pid_str, (char *) NULL);
        fprintf(stderr, "loopmgrctl: Failed to run the polkit agent %s: %s\n", binary,
                strerror(errno));
        _exit(127);
}

int ctl_agent_open(void) {
        _cleanup_close_ int read_fd = -EBADF, write_fd = -EBADF;
        pid_t pid, parent = getpid();
        const char *binary;
        struct pollfd p;
        int fds[2], r;
        char c;

        if (agent_pid > 0)
                return 0;

        binary = secure_getenv("LOOPMGR_PKTTYAGENT");
        if (!binary || !binary[0])
                binary = CTL_PKTTYAGENT_DEFAULT;
        if (access(binary, X_OK) < 0)
                return -errno;

        if (pipe2(fds, O_CLOEXEC) < 0)
                return -errno;
        read_fd = fds[0];
        write_fd = fds[1];

        /* Whatever we printed must not be printed twice by the child's stdio. */
        fflush(stdout);
        fflush(stderr);

        pid = fork();
        if (pid < 0)
                return -errno;
        if (pid == 0)
                agent_exec(binary, write_fd, parent);

        agent_pid = pid;
        write_fd = safe_close(write_fd);

        /* The agent closes its end once it is registered: EOF here. It also closes it by
         * exiting, so EOF alone proves nothing; it must still be running then. */
        p = (struct pollfd){.fd = read_fd, .events = POLLIN};
        for (;;) {
                r = poll(&p, 1, AGENT_REGISTER_TIMEOUT_MSEC);
                if (r < 0 && errno == EINTR)
                        continue;
                break;
        }
        if (r < 0) {
                r = -errno;
                ctl_agent_close();
                return r;
        }
        if (r == 0) {
                ctl_agent_close();
                return -ETIMEDOUT;
        }
        if (read(read_fd, &c, 1) != 0) {
                /* The agent writes nothing; something else is wrong. */
                ctl_agent_close();
                return -EPROTO;
        }

        if (waitpid(pid, NULL, WNOHANG) == pid) {
                agent_pid = 0;
                return -ESRCH;
        }
        return 0;
}

/* A new method call with the header and the body of m. */
static int message_copy_call(sd_bus *bus, sd_bus_message *m, sd_bus_message **ret) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *copy = NULL;
        int r;

        r = sd_bus_message_new_method_call(
                bus, &copy, sd_bus_message_get_destination(m), sd_bus_message_get_path(m),
                sd_bus_message_get_interface(m), sd_bus_message_get_member(m));
        if (r < 0)
                return r;
        r = sd_bus_message_rewind(m, true);
        if (r < 0)
                return r;
        /* Copies unix fds by duplicating them. */
        r = sd_bus_message_copy(copy, m, true);
        if (r < 0)
                return r;
        r = sd_bus_message_set_allow_interactive_authorization(copy, true);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(copy);
        return 0;
}

int ctl_call(sd_bus *bus, sd_bus_message *m, uint64_t usec, sd_bus_error *error,
             sd_bus_message **ret_reply) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *copy = NULL;
        int r;

        r = sd_bus_call(bus, m, usec, error, ret_reply);
        if (r >= 0 || !agent_allowed ||
            !sd_bus_error_has_name(error, SD_BUS_ERROR_INTERACTIVE_AUTHORIZATION_REQUIRED))
                return r;

        /* Build the copy before starting anything: nothing to undo when this fails. */
        if (message_copy_call(bus, m, &copy) < 0)
                return r;

        if (agent_pid <= 0) {
                int k = ctl_agent_open();

                if (k < 0) {
                        log_fail(0,
                                 "Cannot start a polkit authentication agent on this "
                                 "terminal: %s.",
                                 k == -ESRCH    ? "it exited at once"
                                 : k == -ENOENT ? "pkttyagent is not installed"
                                                : strerror(-k));
                        return r;
                }
        }

        sd_bus_error_free(error);
        r = sd_bus_call(bus, copy, usec + CALL_INTERACTIVE_USEC, error, ret_reply);

        /* An agent that failed to register also closes the notify fd, by exiting; it may not
         * have been reapable yet when ctl_agent_open() looked. By now it is. */
        if (r < 0 &&
            sd_bus_error_has_name(error, SD_BUS_ERROR_INTERACTIVE_AUTHORIZATION_REQUIRED) &&
            agent_pid > 0 && waitpid(agent_pid, NULL, WNOHANG) == agent_pid) {
                agent_pid = 0;
                log_fail(0, "The polkit authentication agent on this terminal exited without "
                            "asking for a password.");
        }
        return r;
}
