using System.Net.Sockets;
using System.Text;
using System.Text.Json.Nodes;
using Vfio.PeerBench;

namespace Vfio.Tests.PeerBench;

/// <summary>The QMP client against a scripted server on a Unix socket, replaying what QEMU 10.0 sent.</summary>
public sealed class QmpClientTests : IDisposable
{
    private const string Greeting =
        """{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": "Debian 1:10.0.2+ds-2+deb13u1~bpo12+1"}, """
        + "\"capabilities\": [\"oob\"]}}";
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(20);
    private readonly string _dir = Directory.CreateTempSubdirectory("qmp-test-").FullName;
    // A socket of its own per server: .NET unlinks a listener's path when it is disposed, which must not remove the next one's
    private int _servers;
    private string SocketPath => Path.Combine(_dir, $"qmp{_servers}.sock");

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>Serves one connection: writes the greeting, then for each command line received writes what the script
    /// answers (null: close the connection). Returns the commands it received.</summary>
    private Task<List<string>> Serve(Func<JsonObject, string?> script, string greeting = Greeting)
    {
        _servers++;
        var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        listener.Bind(new UnixDomainSocketEndPoint(SocketPath));
        listener.Listen(1);
        return Task.Run(() =>
        {
            var received = new List<string>();
            using (listener)
            using (var s = listener.Accept())
            using (var stream = new NetworkStream(s))
            using (var reader = new StreamReader(stream, Encoding.UTF8))
            {
                stream.Write(Encoding.UTF8.GetBytes(greeting + "\r\n"));
                while (reader.ReadLine() is string line)
                {
                    received.Add(line);
                    var reply = script((JsonObject)JsonNode.Parse(line)!);
                    if (reply is null) break;
                    stream.Write(Encoding.UTF8.GetBytes(reply));
                }
            }
            return received;
        });
    }

    private static string Return(JsonObject cmd, string value = "{}") => $"{{\"return\": {value}, \"id\": {cmd["id"]}}}\r\n";

    [Fact]
    public async Task Negotiates_capabilities_runs_commands_and_keeps_events_that_come_between()
    {
        var server = Serve(cmd => cmd["execute"]!.GetValue<string>() switch
        {
            "qmp_capabilities" => Return(cmd),
            "query-status" => """{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RESUME"}""" + "\r\n"
                              + Return(cmd, """{"status": "running", "running": true}"""),
            _ => null,
        });
        using (var qmp = QmpClient.Connect(SocketPath, Timeout))
        {
            Assert.Equal("10.0.2", qmp.Version);
            var status = (JsonObject)qmp.Execute("query-status")!;
            Assert.Equal("running", status["status"]!.GetValue<string>());
            Assert.Equal("RESUME", Assert.Single(qmp.Events)["event"]!.GetValue<string>());
        }
        var sent = await server;
        Assert.Equal("""{"execute":"qmp_capabilities","id":1}""", sent[0]);
        Assert.Equal("""{"execute":"query-status","id":2}""", sent[1]);
    }

    [Fact]
    public async Task Pipelined_commands_are_written_before_any_reply_and_each_reply_is_matched_by_id()
    {
        var pending = new List<JsonObject>();
        var server = Serve(cmd =>
        {
            if (cmd["execute"]!.GetValue<string>() == "qmp_capabilities") return Return(cmd);
            pending.Add(cmd);
            // answers only once both commands are in: a client that waited for the first reply would hang here
            return pending.Count < 2 ? "" : string.Concat(pending.Select(c => Return(c)));
        });
        using (var qmp = QmpClient.Connect(SocketPath, Timeout))
        {
            int stop = qmp.Send("stop");
            int migrate = qmp.Send("migrate", new JsonObject { ["uri"] = "tcp:127.0.0.1:4444" });
            Assert.NotNull(qmp.Receive("stop", stop));
            Assert.NotNull(qmp.Receive("migrate", migrate));
        }
        Assert.Equal("""{"execute":"migrate","id":3,"arguments":{"uri":"tcp:127.0.0.1:4444"}}""", (await server)[2]);
    }

    [Fact]
    public void A_refused_command_throws_qemus_class_and_text()
    {
        _ = Serve(cmd => cmd["execute"]!.GetValue<string>() == "qmp_capabilities" ? Return(cmd)
            : "{\"id\": " + cmd["id"]
              + """, "error": {"class": "GenericError", "desc": "VFIO device doesn't support device and IOMMU dirty tracking"}}"""
              + "\r\n");
        using var qmp = QmpClient.Connect(SocketPath, Timeout);
        var e = Assert.Throws<QmpException>(() => qmp.Execute("migrate", new JsonObject { ["uri"] = "tcp:127.0.0.1:1" }));
        Assert.Equal("QMP migrate: GenericError: VFIO device doesn't support device and IOMMU dirty tracking", e.Message);
    }

    [Fact]
    public void A_reply_for_another_command_is_an_error()
    {
        _ = Serve(cmd => cmd["execute"]!.GetValue<string>() == "qmp_capabilities" ? Return(cmd) : """{"return": {}, "id": 99}""" + "\r\n");
        using var qmp = QmpClient.Connect(SocketPath, Timeout);
        Assert.Contains("not for command id 2", Assert.Throws<QmpException>(() => qmp.Execute("stop")).Message);
    }

    [Fact]
    public void A_closed_connection_a_message_that_is_not_json_and_a_greeting_that_is_not_one_are_errors()
    {
        _ = Serve(cmd => cmd["execute"]!.GetValue<string>() == "qmp_capabilities" ? Return(cmd) : null);
        using (var qmp = QmpClient.Connect(SocketPath, Timeout))
            Assert.Equal("QMP stop: connection closed", Assert.Throws<QmpException>(() => qmp.Execute("stop")).Message);

        _ = Serve(cmd => cmd["execute"]!.GetValue<string>() == "qmp_capabilities" ? Return(cmd) : "{\"return\": \r\n");
        using (var qmp = QmpClient.Connect(SocketPath, Timeout))
            Assert.StartsWith("QMP stop: a message that is not JSON", Assert.Throws<QmpException>(() => qmp.Execute("stop")).Message);

        _ = Serve(_ => null, greeting: """{"return": {}}""");
        Assert.StartsWith("QMP greeting: the first message is not a greeting",
            Assert.Throws<QmpException>(() => QmpClient.Connect(SocketPath, Timeout)).Message);
    }

    [Fact]
    public void A_message_longer_than_the_limit_is_refused_without_reading_it_all()
    {
        // a line that never ends: the reader must give up at the limit rather than buffer it
        var endless = new string('x', QmpLineReader.MaxMessageBytes + 1);
        _ = Serve(cmd => cmd["execute"]!.GetValue<string>() == "qmp_capabilities" ? Return(cmd) : "{\"return\": \"" + endless);
        using var qmp = QmpClient.Connect(SocketPath, Timeout);
        Assert.Equal($"QMP stop: a message longer than {QmpLineReader.MaxMessageBytes} bytes",
            Assert.Throws<QmpException>(() => qmp.Execute("stop")).Message);
    }

    [Fact]
    public void Connect_says_why_when_qemu_is_gone_and_gives_up_at_the_timeout()
    {
        Assert.Equal($"QMP {SocketPath}: QEMU exited with 1",
            Assert.Throws<QmpException>(() => QmpClient.Connect(SocketPath, Timeout, () => "QEMU exited with 1")).Message);
        Assert.StartsWith($"QMP {SocketPath}: not accepting within 0 s",
            Assert.Throws<QmpException>(() => QmpClient.Connect(SocketPath, TimeSpan.FromMilliseconds(200))).Message);
    }
}
