/* Probe for the seccomp profile: glibc's posix_spawn tries clone3 first and falls back to clone only when
 * clone3 fails with ENOSYS. Under a profile that answered EPERM instead, spawning would fail. Prints what a
 * raw clone3 returned and whether posix_spawn worked; exits 0 only if the child ran and exited 0. */
#define _GNU_SOURCE
#include <errno.h>
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

int main(int argc, char **argv) {
    long rc = syscall(435 /* SYS_clone3 */, NULL, 0);
    printf("clone3=%s\n", rc == -1 ? strerrorname_np(errno) : "ok");
    char *child[] = {argc > 1 ? argv[1] : "/bin/true", NULL};
    pid_t pid;
    int err = posix_spawn(&pid, child[0], NULL, NULL, child, environ);
    if (err != 0) {
        printf("posix_spawn=%s\n", strerrorname_np(err));
        return 1;
    }
    int status;
    waitpid(pid, &status, 0);
    printf("posix_spawn=ok status=%d\n", WEXITSTATUS(status));
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}
