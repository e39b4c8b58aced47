using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using Vfio.Migration;

namespace Vfio.Fuzz;

/// <summary>
/// The main channel's framing, fed through a real loopback connection: each message the channel receives must decode as
/// its type (or be refused), and the frames it accepted, re-encoded, must be exactly the bytes it consumed.
/// Threads: the caller reads; a pool thread writes the input into the connection and ends it.
/// </summary>
internal static class FramingContract
{
    private static readonly TimeSpan ReadTimeout = TimeSpan.FromSeconds(10);
    private static readonly Lazy<Socket> s_listener = new(Listen);

    private static Socket Listen()
    {
        var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        s.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        s.Listen(4);
        return s;
    }

    public static Outcome Check(ReadOnlySpan<byte> input)
    {
        byte[] data = input.ToArray();
        var listener = s_listener.Value;
        using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        client.Connect(listener.LocalEndPoint!);
        using var connection = new Connection(listener.Accept(), ReadTimeout, "main channel") { ReceiveTimeout = ReadTimeout };
        var writer = Task.Run(() => WriteAndEnd(client, data));
        try
        {
            var channel = new MainChannel(connection, "peer");
            int consumed = 0;
            try
            {
                while (channel.TryReceive(out var m))
                {
                    int length = m.Body.Length;
                    WireContract.Require(consumed + Protocol.MessageHeaderSize + length <= data.Length,
                        $"framing: a {m.Type} message of {length} bytes past the end of the input");
                    var header = data.AsSpan(consumed, Protocol.MessageHeaderSize);
                    WireContract.Require(BinaryPrimitives.ReadUInt16LittleEndian(header) == (ushort)m.Type
                        && BinaryPrimitives.ReadUInt32LittleEndian(header[4..]) == (uint)length,
                        $"framing: received a {m.Type} message of {length} bytes that the header at offset {consumed} does not describe");
                    WireContract.Require(m.Body.SequenceEqual(data.AsSpan(consumed + Protocol.MessageHeaderSize, length)),
                        $"framing: the body of the {m.Type} message at offset {consumed} is not the bytes that followed its header");
                    if (WireContract.Body(m.Type, m.Body) == Outcome.Refused)
                        return Outcome.Refused; // as a receive loop would: its As<T> throws the same ProtocolException
                    consumed += Protocol.MessageHeaderSize + length;
                }
                WireContract.Require(consumed == data.Length, $"framing: a clean end after {consumed} of {data.Length} bytes");
                return Outcome.Accepted;
            }
            catch (ProtocolException) { return Outcome.Refused; }
            catch (ContractViolationException) { throw; }
            catch (Exception e) { throw new ContractViolationException($"framing: {e.GetType().Name} instead of a ProtocolException", e); }
        }
        finally
        {
            connection.Abort();
            writer.Wait();
        }
    }

    /// <summary>Writes the input and ends the stream; a reader that refused early closes its side, which ends the write.</summary>
    private static void WriteAndEnd(Socket client, byte[] data)
    {
        try
        {
            for (int done = 0; done < data.Length;) done += client.Send(data.AsSpan(done));
            client.Shutdown(SocketShutdown.Send);
        }
        catch (SocketException) { }
    }
}
