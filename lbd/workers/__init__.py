"""Data-plane workers (`lbd run --workers N`): the control plane in one process, relays in N.

    pool.py      the control plane's side: the listeners' verbs over N processes, restarts,
                 usage and metrics summed
    worker.py    one worker process: lbd.listeners.Listeners driven by messages
    channel.py   the messages (plain data, pickled) and fds between them, over a socket pair
    steering.py  the reuseport group per listener and the BPF program that keeps a client
                 on one worker
"""
