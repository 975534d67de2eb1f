"""Drives the emulator's transaction coordinator with Apache Qpid Proton, an AMQP 1.0 client
that shares no code with the emulator.

Usage: transactions.py HOST PORT KEY_NAME KEY SCENARIO IN_QUEUE OUT_QUEUE

With EMULATOR_HOLD=1, the script prints {"pending": true} just before it discharges and waits
for a line on stdin, so the caller can check that nothing is visible yet.

Scenarios (each prints one JSON line with what happened):
  commit      receive one message from IN_QUEUE, then in one transaction accept it and send two
              messages to OUT_QUEUE, and commit
  rollback    the same, and roll back
  timeout     declare, send one message, wait past the transaction timeout, then commit
  overflow    declare, send 101 messages in the transaction, then commit
  disconnect  receive, accept and send in a transaction, then close the connection without
              discharging
"""
import json
import os
import sys

from proton import Message
from proton.handlers import MessagingHandler, TransactionHandler
from proton.reactor import Container


class Scenario(MessagingHandler, TransactionHandler):
    def __init__(self, host, port, key_name, key, scenario, in_queue, out_queue):
        super(Scenario, self).__init__(prefetch=0, auto_accept=False, auto_settle=True)
        self.url = "amqp://%s:%s" % (host, port)
        self.key_name = key_name
        self.key = key
        self.scenario = scenario
        self.in_queue = in_queue
        self.out_queue = out_queue
        self.result = {"scenario": scenario}
        self.transaction = None
        self.received = None
        self.rejected_sends = 0
        self.accepted_sends = 0

    def on_start(self, event):
        self.container = event.container
        self.conn = event.container.connect(
            self.url,
            user=self.key_name,
            password=self.key,
            allowed_mechs="PLAIN",
            allow_insecure_mechs=True,
        )
        # The receiver is attached first, so its queue is the session's "via" entity.
        if self.scenario in ("commit", "rollback", "disconnect"):
            self.receiver = event.container.create_receiver(self.conn, self.in_queue)
        self.sender = event.container.create_sender(self.conn, self.out_queue)
        event.container.declare_transaction(self.conn, handler=self)

    def on_transaction_declared(self, event):
        self.transaction = event.transaction
        self.result["declared"] = True
        if self.scenario in ("commit", "rollback", "disconnect"):
            self.receiver.flow(1)
        elif self.scenario == "timeout":
            self.transaction.send(self.sender, Message(body="late", id="late-1"))
            self.container.schedule(float(self.timeout_wait()), self)
        elif self.scenario == "overflow":
            for i in range(101):
                self.transaction.send(self.sender, Message(body="m%d" % i, id="overflow-%d" % i))

    def timeout_wait(self):
        return float(os.environ.get("EMULATOR_TIMEOUT_WAIT", "1.5"))

    def on_timer_task(self, event):
        self.transaction.commit()

    def on_message(self, event):
        body = event.message.body
        # The official SDK sends bodies as data sections: bytes of JSON.
        self.received = json.loads(body.decode("utf8")) if isinstance(body, (bytes, memoryview)) else body
        self.result["received"] = self.received
        self.transaction.accept(event.delivery)
        for i in range(2):
            self.transaction.send(self.sender, Message(body="tx-%d" % i, id="tx-%d" % i))
        if self.scenario in ("commit", "rollback"):
            hold()
        if self.scenario == "commit":
            self.transaction.commit()
        elif self.scenario == "rollback":
            self.transaction.abort()
        elif self.scenario == "disconnect":
            self.container.schedule(0.3, Closer(self))

    def on_accepted(self, event):
        self.accepted_sends += 1

    def on_rejected(self, event):
        self.rejected_sends += 1
        if self.scenario == "overflow" and self.rejected_sends == 1:
            self.transaction.commit()

    def on_transaction_committed(self, event):
        self.finish("committed")

    def on_transaction_aborted(self, event):
        self.finish("aborted")

    def on_transaction_commit_failed(self, event):
        condition = event.delivery.remote.condition
        self.result["condition"] = condition.name if condition is not None else None
        self.finish("commit_failed")

    def on_transaction_declare_failed(self, event):
        self.finish("declare_failed")

    def finish(self, outcome):
        self.result["result"] = outcome
        self.result["rejectedSends"] = self.rejected_sends
        self.conn.close()


def hold():
    if os.environ.get("EMULATOR_HOLD") == "1":
        print(json.dumps({"pending": True}), flush=True)
        sys.stdin.readline()


class Closer(object):
    def __init__(self, scenario):
        self.scenario = scenario

    def on_timer_task(self, event):
        self.scenario.result["result"] = "closed"
        self.scenario.conn.close()


def main():
    host, port, key_name, key, scenario, in_queue, out_queue = sys.argv[1:8]
    handler = Scenario(host, port, key_name, key, scenario, in_queue, out_queue)
    Container(handler).run()
    print(json.dumps(handler.result))


if __name__ == "__main__":
    main()
