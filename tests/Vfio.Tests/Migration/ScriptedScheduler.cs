using Vfio.Migration;

namespace Vfio.Tests.Migration;

/// <summary>
/// Test scheduler: the packets named in the script go to the given channels in the given order; the script's
/// first round (one packet per channel) is released together, the rest only after <see cref="Gap"/>, so the
/// destination receives the first round before the second. Packets not in the script go to channel 0 afterwards.
/// </summary>
internal sealed class ScriptedScheduler : IPacketScheduler
{
    private readonly List<(int Channel, int Device, uint Buffer)> _script;
    private readonly Dictionary<(int, uint), OutPacket> _held = new();
    private readonly Queue<OutPacket>[] _queues;
    private readonly List<OutPacket> _unscripted = new();
    private bool _released;
    private bool _completed;

    public ScriptedScheduler(int channels, IEnumerable<(int Channel, int Device, uint Buffer)> script)
    {
        _script = script.ToList();
        _queues = Enumerable.Range(0, channels).Select(_ => new Queue<OutPacket>()).ToArray();
    }

    public TimeSpan Gap { get; init; } = TimeSpan.FromMilliseconds(100);
    /// <summary>If set, the rest of the script is released only once this is true (polled after Gap, for at most 10 s).</summary>
    public Func<bool>? ReleaseWhen { get; init; }

    public void Enqueue(OutPacket packet)
    {
        lock (_queues)
        {
            if (_script.Any(s => s.Device == packet.Device && s.Buffer == packet.Buffer))
                _held[(packet.Device, packet.Buffer)] = packet;
            else
                _unscripted.Add(packet);
            if (!_released && _held.Count == _script.Count)
            {
                _released = true;
                var script = _script;
                new Thread(() => Release(script)) { IsBackground = true, Name = "scripted scheduler" }.Start();
            }
            else if (_released)
                Flush();
        }
    }

    private void Release(List<(int Channel, int Device, uint Buffer)> script)
    {
        var firstRound = new HashSet<int>();
        var later = new List<(int Channel, int Device, uint Buffer)>();
        lock (_queues)
        {
            foreach (var s in script)
                if (firstRound.Add(s.Channel)) _queues[s.Channel].Enqueue(_held[(s.Device, s.Buffer)]);
                else later.Add(s);
            Monitor.PulseAll(_queues);
        }
        Thread.Sleep(Gap);
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (ReleaseWhen is not null && !ReleaseWhen() && DateTime.UtcNow < deadline)
            Thread.Sleep(5);
        lock (_queues)
        {
            foreach (var s in later) _queues[s.Channel].Enqueue(_held[(s.Device, s.Buffer)]);
            _held.Clear();
            _script.Clear();
            Flush();
            Monitor.PulseAll(_queues);
        }
    }

    private void Flush()
    {
        if (_script.Count > 0) return;
        foreach (var p in _unscripted) _queues[0].Enqueue(p);
        _unscripted.Clear();
        Monitor.PulseAll(_queues);
    }

    public bool TryTake(int channel, CancellationToken token, out OutPacket packet)
    {
        lock (_queues)
        {
            while (true)
            {
                if (token.IsCancellationRequested) { packet = default; return false; }
                if (_queues[channel].Count > 0) { packet = _queues[channel].Dequeue(); return true; }
                if (_completed && _script.Count == 0 && _unscripted.Count == 0) { packet = default; return false; }
                Monitor.Wait(_queues);
            }
        }
    }

    public void Cancel()
    {
        lock (_queues) Monitor.PulseAll(_queues);
    }

    public void Complete()
    {
        lock (_queues)
        {
            _completed = true;
            Monitor.PulseAll(_queues);
        }
    }
}
